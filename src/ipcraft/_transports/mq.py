"""mq://name — a POSIX message queue as an ipcraft Queue (many to many, priority= on send).

Decisions:

* **One kernel message per ipcraft message**: the 8-byte frame header and the payload are joined and
  sent with one mq_send, so the largest payload is the queue's msgsize minus 8 (``max_payload``).
* **priority=** (0 .. PRIORITY_MAX) passes through ``send``; the kernel delivers higher priorities
  first, and ``Queue.last_meta`` reports ``{"priority": p}`` of the message received.  ``recv`` takes
  no selection option: the kernel has none for POSIX queues.
* **fileno()** is the queue descriptor: readable while a message waits, so select/epoll/asyncio
  work; ``wait_readable`` polls it.
* **An unlinked name ends the queue.**  The kernel keeps an unlinked queue alive for the processes
  that have it open and never wakes their waiters, so a receiver whose owner closed (and so unlinked)
  the queue would wait forever.  A wait here sleeps in slices of ``_SLICE`` seconds and between them
  checks that the name still leads to this queue (open it and compare inodes); when it does not,
  and the queue is empty, the wait ends with PeerVanished.  The handle that unlinked the name itself
  skips the check.  The happy path pays nothing: a message that is there is taken at once.
* **authenticated** (pickle allowed) when the queue belongs to this uid and its mode grants nothing
  to group or others (the default 0600): then only this uid and root can have put messages there.
* **check_channel()**: a queue has no end of stream and no peer; the parts of the conformance suite
  about close/EOF and peers do not apply.  Message boundaries, sizes, serializers, timeouts and
  concurrent senders do.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

from .._endpoint import Endpoint
from .._names import DEFAULT_MODE
from .._wait import wait_fd
from ..errors import InvalidEndpoint, PeerVanished, Timeout
from ..primitives import _mq_common as _common
from ..primitives.posix_mq import PosixMessageQueue
from . import QueueFastPath, framed, unframe
from ._contract import Message, Transport, TryRecv, TrySend

#: Longest single sleep of a wait before the name is checked again, in seconds.
_SLICE = 0.5


class MqTransport(QueueFastPath):
    """Messages over one PosixMessageQueue."""

    def __init__(self, queue: PosixMessageQueue, endpoint: Endpoint) -> None:
        self._q = queue
        self._endpoint = endpoint
        self._unlinked = False
        self._gone = False
        self.max_payload = queue.msgsize
        self.limit_source = (f"msgsize of POSIX message queue {queue.name} (set at create(); system maximum "
                             f"{_common.describe(_common.MQ_MSGSIZE_MAX)})")
        self.last_meta: dict[str, Any] = {}
        st = os.fstat(queue.fileno())
        self.authenticated = st.st_uid == os.geteuid() and not st.st_mode & 0o077

    @property
    def owner(self) -> bool:  # type: ignore[override]
        return self._q.owner

    def fileno(self) -> int:
        return self._q.fileno()

    def close(self) -> None:
        self._q.close()

    def unlink(self) -> None:
        self._unlinked = True
        self._q.unlink()

    def extra(self) -> dict[str, Any]:
        q = self._q
        return {"name": q.name, "maxmsg": q.maxmsg, "msgsize": q.msgsize, "queue": q}

    def fast_path(self) -> tuple[TrySend, TryRecv]:
        """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)`` for Channel's fast path.

        They cover the common call (no timeout, no priority) in one slice of the wait and give up
        (False / None, nothing sent or taken) on anything else, so the general path below does the
        same call with its full semantics and error reports.
        """
        q = self._q
        return self._queue_fast_path(lambda frame: q.send(frame, 0, _SLICE), lambda: q.recv(_SLICE),
                                     "priority", lambda: not self._gone)

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, priority: int = 0) -> None:
        data = b"".join(framed(sid, payload))
        q = self._q
        while True:
            try:
                q.send(data, priority, _slice(deadline))
                return
            except Timeout as exc:
                self._after_slice(exc, deadline, "sending to")

    def recv_message(self, deadline: float | None) -> Message:
        q = self._q
        while True:
            try:
                data, priority = q.recv(0 if self._gone else _slice(deadline))
            except Timeout as exc:
                self._after_slice(exc, deadline, "receiving from")
                continue
            self.last_meta = {"priority": priority}
            return unframe(data, self.last_meta)

    def wait_readable(self, deadline: float | None) -> bool:
        fd = self._q.fileno()
        while True:
            if self._gone or wait_fd(fd, select.POLLIN, _deadline_of_slice(deadline)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._gone = not self._unlinked and not self._name_is_ours()

    def _after_slice(self, timeout: Timeout, deadline: float | None, doing: str) -> None:
        """A slice ended without success: re-raise ``timeout`` if the deadline passed, end the wait
        if the name is gone, else return to wait another slice."""
        if deadline is not None and time.monotonic() >= deadline:
            raise timeout
        if self._gone or (not self._unlinked and not self._name_is_ours()):
            self._gone = True
            raise PeerVanished(f"{doing} {self._endpoint}: the queue's name was unlinked (its owner closed "
                               "it) and no message is left") from None

    def _name_is_ours(self) -> bool:
        try:
            probe = PosixMessageQueue.open(self._q.name)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # cannot tell (permissions, fd limit): assume it is
        try:
            return os.fstat(probe.fileno()).st_ino == os.fstat(self._q.fileno()).st_ino
        finally:
            probe.close()


def _slice(deadline: float | None) -> float:
    return _SLICE if deadline is None else min(max(0.0, deadline - time.monotonic()), _SLICE)


def _deadline_of_slice(deadline: float | None) -> float:
    end = time.monotonic() + _SLICE
    return end if deadline is None else min(end, deadline)


def open_queue(endpoint: Endpoint, create: bool | str) -> Transport:
    """Open (create=False), create exclusively (True) or open-or-create ("if_missing") mq://name."""
    opts = endpoint.options
    maxmsg, msgsize = opts.get("maxmsg"), opts.get("msgsize")
    mode = opts.get("mode", DEFAULT_MODE)
    if create is True:
        q = PosixMessageQueue.create(endpoint.address, maxmsg=maxmsg, msgsize=msgsize, mode=mode)
    elif create == "if_missing":
        q = PosixMessageQueue.open_or_create(endpoint.address, maxmsg=maxmsg, msgsize=msgsize, mode=mode)
    else:
        q = PosixMessageQueue.open(endpoint.address)
        if (maxmsg is not None and maxmsg != q.maxmsg) or (msgsize is not None and msgsize != q.msgsize):
            q.close()
            raise InvalidEndpoint(f"{endpoint}: the queue exists with maxmsg={q.maxmsg} msgsize={q.msgsize}, "
                                  "not what the URL asks for (sizes are set only when creating)")
    try:
        return MqTransport(q, endpoint)
    except BaseException:
        q.close()
        raise
