"""Transports: one adapter per URL scheme, below the channel and above the primitives.

The contract every transport follows (byte streams, message ports, capabilities) is in
``_contract.py``; framing a byte stream into a message port is ``_framed.py``.  Each scheme's module
is imported only when first used, through ``REGISTRY``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from .._framing import HEADER_SIZE, check_message_header, header
from ._contract import NO_META, Message, Transport, TryRecv, TrySend

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


def framed(sid: int, payload: memoryview, raw: bool = False) -> list[bytes | memoryview]:
    """The parts of one message on a mechanism that carries ipcraft's 8-byte frame header in front of
    each message (seqpacket, datagrams, message queues, ring://): header, payload.  ``raw``
    (framing=none): the payload alone, one kernel message being one message."""
    return [payload] if raw else [header(sid, payload.nbytes), payload]


def unframe(data: Any, meta: Mapping[str, Any] = NO_META, raw: bool = False) -> Message:
    """The :class:`Message` in one whole received message that starts with ipcraft's frame header
    (``raw``, framing=none: the whole message is a raw payload).

    Raises:
        ProtocolError: no valid header, or a length that differs from what arrived.
    """
    mv = data if data.__class__ is memoryview else memoryview(data)
    if raw:
        return Message(0, mv, meta)
    sid, payload = check_message_header(mv, len(mv))
    return Message(sid, payload, meta)


class QueueFastPath(Transport):
    """Channel's fast path over a kernel message queue (mq://, sysvmq://): one primitive call each,
    framing included (none with framing=none: ``_raw``)."""

    #: framing=none: each kernel message is the payload itself, without ipcraft's header.
    _raw: bool = False

    def _queue_fast_path(self, send: Callable[[bytes], object], recv: Callable[[], tuple[Any, Any]],
                         meta_key: str, usable: Callable[[], bool] = lambda: True) -> tuple[TrySend, TryRecv]:
        """``send(frame)`` and ``recv() -> (frame, meta)`` make the common call, and ``last_meta``
        becomes ``{meta_key: meta}``.  On any error (or when ``usable()`` is false) they give up having
        sent or taken nothing, so the channel's general path does the same call with its full
        semantics and reports.  A frame taken that is not ipcraft's is a ProtocolError: it cannot be
        put back."""
        raw = self._raw
        limit = (self.max_payload or 0) - (0 if raw else HEADER_SIZE)

        def try_send(data: Any, sid: int = 0) -> bool:
            n = len(data) if data.__class__ is bytes else memoryview(data).nbytes
            if n > limit or not usable():
                return False
            try:
                send(data if raw else header(sid, n) + data)
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
            self.last_meta = {meta_key: meta}
            if raw:
                return bytes(data)
            return check_message_header(memoryview(data), len(data))[1].tobytes()

        return try_send, try_recv
