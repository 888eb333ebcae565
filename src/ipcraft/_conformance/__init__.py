"""The conformance suite behind :func:`ipcraft.testing.check_channel`: one contract, every scheme.

``make_pair() -> (sender, receiver)`` makes a fresh pair of connected handles for each check; the suite
closes both afterwards.  Capabilities (keyword arguments, see :class:`Capabilities`) say what differs
between schemes; everything else must behave identically over a pipe, a socket, a message queue or
a shared-memory ring.

Decisions:

* **Each check gets its own pair**, so a failure in one never hides behind the state another left.
* **Two processes where it matters**: order, sizes, boundaries, end of stream, iteration, waiting
  (poll, select) and the peer's death run with one end in a forked child (ipcraft.testing.Child),
  because buffering, wake-ups and close semantics differ between threads and processes.  After the
  fork each process closes the copy of the end it does not use, as with a file descriptor (this is
  part of the contract: closing an inherited copy must not end the other process's use).  Queue
  handles are not closed in the process that does not use them: closing the owner would unlink the
  queue under the other process.
* **Small in-process bursts only**: without a concurrent reader the suite sends at most four small
  messages (under 2 KiB together), which every mechanism buffers (a System V queue holds 16 KiB, a
  POSIX queue 10 messages by default).  Anything larger has a reader in another process.
* **Lossy mechanisms** (``lossy=True``, udp://) drop datagrams when the receiver falls behind, so there
  the sending process waits for an acknowledgement on a side pipe after each message.
* **Limits are read, not guessed**: the largest size tried is the smaller of ``max_size`` and the
  channel's own limit (its max_message_size, or the transport's ``max_payload`` less the header).
"""

from __future__ import annotations

from . import data, lifecycle  # noqa: F401  (importing them registers their checks in CHECKS)
from ._core import CHECKS as CHECKS
from ._core import Capabilities as Capabilities
from ._core import run_conformance as run_conformance
