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
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .._framing import HEADER_SIZE, check_message_header, header
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
    "zmq+tcp": "zeromq",
    "zmq+ipc": "zeromq",
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


def framed_fast_path(t: Transport, send: Callable[[bytes], object], recv: Callable[[], tuple[Any, Any]],
                     meta_key: str, usable: Callable[[], bool] = lambda: True) -> tuple[Any, Any]:
    """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)`` for Channel's fast path over a
    kernel message queue: one primitive call each, framing included.

    ``send(frame)`` and ``recv() -> (frame, meta)`` make the common call; ``t.last_meta[meta_key]``
    gets ``meta``.  On any error (or when ``usable()`` is false) they give up, having sent or taken
    nothing, so the channel's general path does the same call with its full semantics and reports.
    A frame taken that is not ipcraft's is a ProtocolError: it cannot be put back.
    """
    limit = (t.max_payload or 0) - HEADER_SIZE

    def try_send(data: Any, sid: int = 0) -> bool:
        n = len(data) if data.__class__ is bytes else memoryview(data).nbytes
        if n > limit or not usable():
            return False
        try:
            send(header(sid, n) + data)
        except Exception:  # noqa: BLE001 - nothing was sent; the general path retries and reports
            return False
        return True

    def try_recv() -> bytes | None:
        if not usable():
            return None
        try:
            data, meta = recv()
        except Exception:  # noqa: BLE001 - nothing was taken; the general path retries and reports
            return None
        t.last_meta = {meta_key: meta}  # type: ignore[attr-defined]
        return check_message_header(memoryview(data), len(data))[1].tobytes()

    return try_send, try_recv
