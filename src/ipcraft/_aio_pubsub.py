"""asyncio mirror of Publisher and Subscriber (re-exported by ipcraft.aio: ``publish``, ``subscribe``).

* A receive is the sync operation with ``timeout=0``; on Timeout the task sleeps in
  ``loop.add_reader(subscriber.fileno())`` until a publisher pokes it, then tries again.  Nothing is
  taken until the sync call succeeds, so **cancelling a pending receive loses nothing**.
* A send is the sync operation with ``timeout=0``: in drop mode it never waits.  In block mode, when
  the slowest subscriber leaves no room, the task retries after short sleeps (50 us doubling to 5 ms)
  until its deadline; a send is one whole message or nothing, so cancelling it leaves nothing behind.
* ``close()`` is a plain method: it never waits.  A task waiting on the handle then gets HandleClosed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from . import _pubsub
from ._channel import _NoPublicConstructor
from ._endpoint import Endpoint
from ._wait import deadline_after, remaining
from .errors import ChannelClosed, Timeout

_T = TypeVar("_T")
_R = TypeVar("_R")


class _AsyncPubSub(metaclass=_NoPublicConstructor):
    _sync: Any

    @property
    def endpoint(self) -> Endpoint:
        return self._sync.endpoint  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self._sync.closed  # type: ignore[no-any-return]

    @property
    def owner(self) -> bool:
        return self._sync.owner  # type: ignore[no-any-return]

    def extra(self, name: str, default: Any = None) -> Any:
        return self._sync.extra(name, default)

    def close(self) -> None:
        """Close now (never waits)."""
        self._sync.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<aio." + repr(self._sync)[1:]


class Publisher(_AsyncPubSub, Generic[_T]):
    """The async face of :class:`ipcraft.Publisher`.

    .. versionadded:: 0.2
    """

    def __init__(self, sync: _pubsub.Publisher[_T]) -> None:
        self._sync = sync

    async def _retry(self, op: Callable[[], None], timeout: float | None) -> None:
        deadline = deadline_after(timeout)
        pause = 0.00005
        while True:
            try:
                return op()
            except Timeout:
                left = remaining(deadline)
                if left == 0:
                    raise
            await asyncio.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.005)

    async def send(self, obj: _T, *, timeout: float | None = None, **extra: Any) -> None:
        """Serialize and publish ``obj``; as the sync ``send`` (``extra``: ZeroMQ's ``topic=``)."""
        await self._retry(lambda: self._sync.send(obj, timeout=0, **extra), timeout)

    async def send_bytes(self, data: Any, offset: int = 0, size: int | None = None, *,
                         timeout: float | None = None, **extra: Any) -> None:
        """Publish bytes; as the sync ``send_bytes``."""
        await self._retry(lambda: self._sync.send_bytes(data, offset, size, timeout=0, **extra), timeout)

    async def send_many(self, objs: Iterable[_T], *, timeout: float | None = None) -> int:
        """Serialize and publish each of ``objs`` as its own message, in order, in batches; as the sync
        ``send_many`` (waiting for room without blocking the loop)."""
        sync = self._sync
        s = sync.serializer
        payloads = [s.dumps(obj) for obj in objs]
        deadline = deadline_after(timeout)
        sent = 0
        while sent < len(payloads):
            sent += sync._push_now(s.id, payloads, sent)
            if sent < len(payloads):
                await self._retry(functools.partial(sync._publish, s.id, payloads[sent], 0), remaining(deadline))
                sent += 1
        return sent


class Subscriber(_AsyncPubSub, Generic[_T]):
    """The async face of :class:`ipcraft.Subscriber`.

    .. versionadded:: 0.2
    """

    def __init__(self, sync: _pubsub.Subscriber[_T]) -> None:
        self._sync = sync
        self._fd = sync.fileno()

    @property
    def missed(self) -> int:
        return int(self._sync.missed)

    @property
    def last_meta(self) -> dict[str, Any]:
        """As the sync ``last_meta`` (ZeroMQ: the last message's ``topic``)."""
        return self._sync.last_meta  # type: ignore[no-any-return]

    @property
    def authenticated(self) -> bool:
        return bool(self._sync.authenticated)

    def fileno(self) -> int:
        return self._fd

    async def _readable(self, deadline: float | None) -> bool:
        left = remaining(deadline)
        if left == 0:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()

        def wake(value: bool) -> None:
            if not fut.done():
                fut.set_result(value)

        loop.add_reader(self._fd, wake, True)
        timer = loop.call_later(left, wake, False) if left is not None else None
        try:
            # A bounded sleep: a poke lost with a killed publisher, or the end of the stream (which
            # pokes nobody), is noticed within a second.
            return await asyncio.wait_for(fut, 1.0) if left is None or left > 1.0 else await fut
        except asyncio.TimeoutError:
            return True
        finally:
            if timer is not None:
                timer.cancel()
            if not self._sync.closed:
                loop.remove_reader(self._fd)

    async def _receive(self, op: Callable[[], _R], timeout: float | None) -> _R:
        deadline = deadline_after(timeout)
        while True:
            try:
                return op()
            except Timeout:
                pass
            if not await self._readable(deadline):
                raise Timeout(f"receiving on {self!r}: timed out after {timeout} s")

    async def recv(self, timeout: float | None = None) -> _T:
        """Receive and deserialize the next message; as the sync ``recv``."""
        return await self._receive(lambda: self._sync.recv(0), timeout)

    async def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None) -> bytes:
        """Receive the next message as bytes; as the sync ``recv_bytes``."""
        return await self._receive(lambda: self._sync.recv_bytes(maxlength, timeout=0), timeout)

    async def recv_many(self, max_messages: int, timeout: float | None = None) -> list[_T]:
        """Receive 1 to ``max_messages`` messages, waiting up to ``timeout`` for the first; as the sync
        ``recv_many``."""
        return await self._receive(lambda: self._sync.recv_many(max_messages, 0), timeout)

    async def recv_bytes_into(self, buffer: Any, offset: int = 0, *, timeout: float | None = None) -> int:
        """Receive the next message into ``buffer``; as the sync ``recv_bytes_into``."""
        return await self._receive(lambda: self._sync.recv_bytes_into(buffer, offset, timeout=0), timeout)

    async def latest(self, timeout: float | None = 0.0) -> _T:
        """The most recent message, without consuming the stream; as the sync ``latest``."""
        return await self._receive(lambda: self._sync.latest(0), timeout)

    async def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message is ready, waiting up to ``timeout`` (None: until one is)."""
        deadline = deadline_after(timeout)
        while not self._sync.poll(0):
            if not await self._readable(deadline):
                return False
        return True

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> _T:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None


async def publish(url: str | Endpoint, create: bool | str = "if_missing", **options: Any) -> Publisher[Any]:
    """Open an async :class:`Publisher`; as :func:`ipcraft.publish` (opening never waits).

    .. versionadded:: 0.2
    """
    return Publisher._create(_pubsub.publish(url, create, **options))  # type: ignore[no-any-return]


async def subscribe(url: str | Endpoint, create: bool | str = False, **options: Any) -> Subscriber[Any]:
    """Open an async :class:`Subscriber`; as :func:`ipcraft.subscribe` (opening never waits).

    .. versionadded:: 0.2
    """
    sync = _pubsub.subscribe(url, create, **options)
    try:
        return Subscriber._create(sync)  # type: ignore[no-any-return]
    except BaseException:
        sync.close()
        raise
