"""Tools for testing code that uses ipcraft, and ipcraft itself.

* :func:`unique_name` / :func:`unique_key`: names and System V keys that cannot collide between tests,
  test runs, or concurrent test sessions (iceoryx2's generate_service_name, never random letters).
* :func:`run_in_child` / :class:`Child`: run a function in a forked child process with a timeout; the
  child's exception (with its traceback) is re-raised in the parent, and a child that overruns its
  timeout is killed.
* :func:`check_channel`: one conformance suite for every channel and queue scheme.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._child import Child as Child
from ._child import ChildFailed as ChildFailed
from ._child import run_in_child as run_in_child
from ._child import session_key_base as session_key_base
from ._child import session_token as session_token
from ._child import unique_key as unique_key
from ._child import unique_name as unique_name

__all__ = ("unique_name", "unique_key", "session_token", "session_key_base", "run_in_child", "Child",
           "ChildFailed", "check_channel")


def check_channel(make_pair: Callable[[], tuple[Any, Any]], **capabilities: Any) -> None:
    """Run the conformance suite over channels made by ``make_pair() -> (sender, receiver)``.

    ``make_pair`` is called once per check and must return two fresh, connected handles; the suite
    closes both.  Some checks fork: each process then closes the copy of the end it does not use,
    which, as with a file descriptor, must not end the other process's use of it.

    Capabilities (keyword arguments) say what differs between mechanisms:
    ``eof=True`` (closing the sender ends the stream; False for queues), ``duplex=False`` (the
    receiver can send back), ``max_size=16 MiB`` (largest message tried, further capped by the
    channel's limit), ``selectable=True`` (fileno() works with select), ``lossy=False`` (messages
    may be dropped when the receiver falls behind, as with udp://).  ``checks=[names]`` runs only
    those checks (see ``ipcraft._conformance.CHECKS``).

    Raises:
        AssertionError: naming the first check that failed, with the original error as its cause.
        TypeError: an unknown capability.
    """
    from ._conformance import run_conformance

    run_conformance(make_pair, **capabilities)
