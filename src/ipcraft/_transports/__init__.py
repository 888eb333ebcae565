"""Transports: one adapter per URL scheme, below the channel and above the primitives.

Two kinds (STYLE.md R14); the channel frames only the first:

* a **stream** transport moves bytes: ``send_all(parts, deadline)``, ``recv_into(buf, deadline) -> n``
  (0 at end of stream).  unix://, tcp://, fifo://, ipcraft.pipe().
* a **message** transport keeps boundaries: ``send_message(parts, deadline, **extra)`` and
  ``recv_message(deadline, **extra) -> buffer``.  unix+seqpacket://, unix+dgram://, udp://, mq://,
  sysvmq://, shm://, ring://, file://.

Both have ``wait_readable(deadline) -> bool``, ``fileno()`` and ``close()``, plus the facts a channel
reports: ``peer`` (what the kernel knows of the other side), ``authenticated`` (whether pickle may be
decoded) and, for message transports, ``max_payload`` with ``limit_source`` (the largest message the
mechanism carries and where that limit comes from).

Deadlines are absolute ``time.monotonic()`` values or None (wait forever).

Each scheme's module is imported only when first used, through ``REGISTRY``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .._peer import Peer

#: scheme -> module (relative to this package) implementing it.
REGISTRY: dict[str, str] = {
    "unix": "unix",
    "unix+seqpacket": "unix",
    "unix+dgram": "dgram",
    "tcp": "tcp",
    "udp": "dgram",
    "fifo": "fifo",
    "mq": "mq",
    "sysvmq": "sysvmq",
    "shm": "shm",
    "ring": "ring",
    "file": "ring",
}


def module_for(scheme: str) -> ModuleType:
    """The transport module for ``scheme``; NotImplementedError if this build has none yet."""
    try:
        name = REGISTRY[scheme]
        return importlib.import_module(f"{__name__}.{name}")
    except (KeyError, ModuleNotFoundError) as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name != f"{__name__}.{REGISTRY.get(scheme)}":
            raise
        raise NotImplementedError(f"the {scheme}:// scheme is not available in this build of ipcraft") from None


class Transport:
    """Attributes every transport has; see the module docstring for the methods of each kind."""

    kind: str = "stream"
    peer: Peer = Peer()
    authenticated: bool = False
    #: Largest payload one message may carry (message transports), None if unlimited.
    max_payload: int | None = None
    #: Where max_payload comes from, for error messages.
    limit_source: str = ""
    #: True for the queue handle that created (and will unlink) the named object.
    owner: bool = False

    def close(self) -> None:
        raise NotImplementedError

    def fileno(self) -> int:
        raise NotImplementedError

    def wait_readable(self, deadline: float | None) -> bool:
        raise NotImplementedError

    def unlink(self) -> None:
        """Remove the named object now (queues); a no-op where nothing is named."""

    def extra(self) -> dict[str, Any]:
        """Transport-specific facts for Channel.extra (typed attributes, anyio style)."""
        return {}
