"""sysvmq://key — a System V message queue as an ipcraft Queue (type= on send and recv).

Addresses: ``sysvmq://1234``, ``sysvmq://0x4d2`` (a key), or ``sysvmq:///path?proj_id=7`` (the key
ftok(3) makes from an existing file, proj_id 1 by default; C programs calling ftok meet the same queue).

Decisions:

* **One kernel message per ipcraft message**, header and payload joined; the largest payload is the
  smaller of msgmax and the queue's qbytes, minus the 8-byte header (``max_payload``).
* **type=** passes through: ``send(obj, type=3)`` sends with type 3 (default 1); ``recv(type=n)``
  selects as the kernel does (0 any, n that type, -n the lowest type <= n) and ``except_type=True``
  takes any type but n (MSG_EXCEPT).  ``Queue.last_meta`` reports ``{"type": t}``.
* **No file descriptor.**  System V queues cannot be watched with select/poll/epoll, so ``fileno()``
  raises io.UnsupportedOperation (as io objects without a descriptor do), and ``wait_readable`` /
  ``Queue.poll`` poll the message count with the primitive's backoff (a few % of a core while
  waiting).  Use mq:// where a descriptor is needed.
* **Timeouts** are the primitive's: a wait without one is the kernel's blocking call; one with a
  timeout polls and ends within a timer slack of the deadline.
* **Removal ends the queue for everyone**: IPC_RMID wakes every waiter with EIDRM at once, which
  becomes PeerVanished (an EOFError).  ``Queue.unlink()`` removes the queue at once, unlike mq://
  where open handles keep working; this handle is closed by it.
* **authenticated** (pickle allowed) when the queue belongs to this uid and its mode grants nothing
  to group or others (the default 0600).
* **check_channel()**: no end of stream and no peer, as for mq://.
"""

from __future__ import annotations

import io
import os
from typing import Any

from .._endpoint import Endpoint
from .._errors import removed_as_vanished
from .._names import DEFAULT_MODE
from .._wait import remaining, retry_until
from ..errors import InvalidEndpoint
from ..primitives import _mq_common as _common
from ..primitives.sysv_mq import SysVMessageQueue, ftok
from . import QueueFastPath, framed, unframe
from ._contract import Message, Transport, TryRecv, TrySend


class SysVMqTransport(QueueFastPath):
    """Messages over one SysVMessageQueue."""

    def __init__(self, queue: SysVMessageQueue, endpoint: Endpoint) -> None:
        self._q = queue
        self._endpoint = endpoint
        self.last_meta: dict[str, Any] = {}
        msgmax = _common.read(_common.MSGMAX)
        if msgmax <= queue.qbytes:
            self.max_payload, self.limit_source = msgmax, _common.describe(_common.MSGMAX)
        else:
            self.max_payload, self.limit_source = queue.qbytes, f"qbytes of {queue!r}"
        st = queue.stat()
        self.authenticated = st.uid == os.geteuid() and not st.mode & 0o077

    @property
    def owner(self) -> bool:  # type: ignore[override]
        return self._q.owner

    def fileno(self) -> int:
        raise io.UnsupportedOperation(
            f"{self._endpoint} has no file descriptor: System V message queues cannot be watched with "
            "select/poll/epoll; use Queue.poll(timeout) (ipcraft polls the queue) or an mq:// queue")

    def close(self) -> None:
        self._q.close()

    def unlink(self) -> None:
        self._q.remove()

    def extra(self) -> dict[str, Any]:
        q = self._q
        return {"key": q.key, "id": q.id, "qbytes": q.qbytes, "queue": q}

    def fast_path(self) -> tuple[TrySend, TryRecv]:
        """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)`` for Channel's fast path.

        They cover the common call (no timeout, type 1 out, any type in) and give up (False / None,
        nothing sent or taken) on any error, so the general path below does the same call with its
        full semantics and error reports.
        """
        q = self._q
        return self._queue_fast_path(lambda frame: q.send(frame, 1, None), lambda: q.recv(0, None), "type")

    def send_message(self, sid: int, payload: memoryview, deadline: float | None,
                     type: int = 1) -> None:  # noqa: A002
        try:
            self._q.send(b"".join(framed(sid, payload)), type, None if deadline is None else remaining(deadline))
        except OSError as exc:
            raise removed_as_vanished(exc) from exc

    def recv_message(self, deadline: float | None, type: int = 0,  # noqa: A002
                     except_type: bool = False) -> Message:
        try:
            data, got = self._q.recv(type, None if deadline is None else remaining(deadline),
                                    except_type=except_type)
        except OSError as exc:
            raise removed_as_vanished(exc) from exc
        self.last_meta = {"type": got}
        return unframe(data, self.last_meta)

    def wait_readable(self, deadline: float | None) -> bool:
        q = self._q
        try:
            return retry_until(lambda: True if q.current_messages else None, deadline) is not None
        except OSError as exc:
            raise removed_as_vanished(exc) from exc


def key_of(endpoint: Endpoint) -> int:
    """The System V key a sysvmq:// endpoint names (ftok for a path)."""
    proj_id = endpoint.options.get("proj_id")
    if endpoint.address.startswith("/"):
        try:
            return ftok(endpoint.address, 1 if proj_id is None else proj_id)
        except ValueError as exc:
            raise InvalidEndpoint(f"{endpoint}: {exc}") from None
    if proj_id is not None:
        raise InvalidEndpoint(f"{endpoint}: proj_id applies only to a path (sysvmq:///path?proj_id=N), "
                              "not to a numeric key")
    return int(endpoint.address)


def open_queue(endpoint: Endpoint, create: bool | str) -> Transport:
    """Open (create=False), create exclusively (True) or open-or-create ("if_missing") sysvmq://key."""
    key = key_of(endpoint)
    qbytes = endpoint.options.get("qbytes")
    mode = endpoint.options.get("mode", DEFAULT_MODE)
    if create is True:
        q = SysVMessageQueue.create(key, mode=mode, qbytes=qbytes)
    elif create == "if_missing":
        q = SysVMessageQueue.open_or_create(key, mode=mode, qbytes=qbytes)
    else:
        q = SysVMessageQueue.open(key)
        if qbytes is not None and qbytes != q.qbytes:
            q.close()
            raise InvalidEndpoint(f"{endpoint}: the queue exists with qbytes={q.qbytes}, not what the URL "
                                  "asks for (set qbytes when creating, or with SysVMessageQueue.qbytes)")
    try:
        return SysVMqTransport(q, endpoint)
    except BaseException:
        q.close()
        raise
