"""bcast://'s fast paths: Publisher.send_bytes/Subscriber.recv_bytes in one C call each (try_send,
try_recv of _native.BcastPort), and the batches (send_many/recv_many: try_send_many, try_recv_many).

Each fast path either finishes the common case or takes nothing and hands over to the general path,
which waits and reports laps, evictions, the end of the stream and sizes; these tests check that hand-
over with real processes and real rings (the other bcast:// tests pass timeouts, which take the general
path).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import time
from collections.abc import Iterator

import pytest

import ipcraft
import ipcraft.aio
from ipcraft import _native
from ipcraft.errors import ChannelClosed, MessagesMissed, MessageTooLarge, Timeout
from ipcraft.serializers import RAW
from ipcraft.testing import Child, unique_name

from .test_bcast import _check, _message, _wait_subscribers


def _size(i: int) -> int:
    return 70_000 if i % 997 == 0 else 8 + i % 200  # now and then one the general path copies GIL-free


@pytest.fixture()
def url() -> Iterator[str]:
    name = unique_name("bf")
    yield f"bcast://{name}"
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


def _native_port(handle: ipcraft.Publisher | ipcraft.Subscriber) -> _native.BcastPort:
    port = handle._port._port  # the transport port's C port
    assert isinstance(port, _native.BcastPort)
    return port


def _drain_fast(url: str, batch: int, wait: str) -> dict[str, object]:
    """A subscriber process receiving without a timeout (the fast paths) until the end of the stream."""
    got: list[int] = []
    with ipcraft.subscribe(url, wait=wait, serializer=RAW) as sub:
        try:
            while True:
                if batch > 1:
                    got += [_check(m) for m in sub.recv_many(batch)]
                else:
                    got.append(_check(sub.recv_bytes()))
        except ChannelClosed as exc:
            ended = type(exc).__name__
        missed = sub.missed
    return {"count": len(got), "ordered": all(b == a + 1 for a, b in itertools.pairwise(got)),
            "first": got[0] if got else None, "missed": missed, "ended": ended}


@pytest.mark.parametrize(("batch", "wait"), [(1, "block"), (1, "spin"), (64, "block")])
def test_fast_paths_deliver_every_message_in_order_to_three_processes(url: str, batch: int, wait: str) -> None:
    """Block mode, 3 subscriber processes, 30,000 checksummed messages sent without a timeout (one at a
    time, or send_many batches): every subscriber gets each one, whole and in order, then the end."""
    n = 30_000
    with ipcraft.publish(url, on_slow="block", capacity=256 * 1024, slow_timeout=30, serializer=RAW) as pub:
        kids = [Child(_drain_fast, url, batch, wait) for _ in range(3)]
        _wait_subscribers(pub, 3)
        if batch > 1:
            for start in range(0, n, 500):
                assert pub.send_many([_message(i, _size(i)) for i in range(start, start + 500)]) == 500
        else:
            for i in range(n):
                pub.send_bytes(_message(i, _size(i)))
    for kid in kids:
        assert kid.result(timeout=120) == {"count": n, "ordered": True, "first": 0, "missed": 0,
                                           "ended": "ChannelClosed"}


def test_try_send_never_waits_and_sends_nothing_when_the_ring_is_full(url: str) -> None:
    """Block mode with a subscriber that does not read: try_send answers False at once (nothing is
    published) and send_bytes then waits in the general path, up to its timeout."""
    with ipcraft.publish(url, on_slow="block", capacity=4096, slow_timeout=30) as pub, \
            ipcraft.subscribe(url) as sub:
        port = _native_port(pub)
        sent = 0
        while port.try_send(bytes(100)):
            sent += 1
        head = pub.extra("subscribers")[0]["lag_bytes"]
        assert 0 < sent < 4096 // 100
        t = time.monotonic()
        assert port.try_send(bytes(100)) is False and time.monotonic() - t < 0.05
        assert port.try_send_many([bytes(100)] * 3) == 0
        assert pub.extra("subscribers")[0]["lag_bytes"] == head
        with pytest.raises(Timeout):
            pub.send_bytes(bytes(100), timeout=0.05)
        assert [len(sub.recv_bytes()) for _ in range(sent)] == [100] * sent
        assert not sub.poll()


def test_a_lap_seen_by_the_fast_path_is_reported_with_the_exact_count(url: str) -> None:
    """Drop mode: a subscriber lapped while it did not read gets MessagesMissed with the exact number
    from recv_bytes() and recv_many() (the fast path hands the lap to the general path), then the oldest
    message still there and everything after it."""
    with ipcraft.publish(url, capacity=4096, serializer=RAW) as pub, \
            ipcraft.subscribe(url, serializer=RAW) as sub:
        for i in range(100):
            pub.send_bytes(_message(i, 40))  # 80-byte records: 4096 bytes hold 51 of them
        with pytest.raises(MessagesMissed) as caught:
            sub.recv_bytes()
        first = _check(sub.recv_bytes())
        assert caught.value.missed == first == sub.missed > 0
        rest = [_check(m) for m in sub.recv_many(1000)]
        assert rest == list(range(first + 1, 100))
        for i in range(100, 200):
            pub.send_bytes(_message(i, 40))
        with pytest.raises(MessagesMissed) as caught:
            sub.recv_many(10)
        got = sub.recv_many(1000)
        assert _check(got[0]) - 100 == caught.value.missed and _check(got[-1]) == 199


def test_max_message_size_is_enforced_on_every_path(url: str) -> None:
    """A subscriber's max_message_size refuses a longer message from recv_bytes, recv and recv_many
    (fast paths) as from recv_bytes(timeout=...) (general path); the next message is received."""
    with ipcraft.publish(url, serializer=RAW) as pub, \
            ipcraft.subscribe(url, serializer=RAW, max_message_size=100) as sub:
        for receive in (lambda: sub.recv_bytes(), lambda: sub.recv(), lambda: sub.recv_many(5)[0],
                        lambda: sub.recv_bytes(timeout=5)):
            pub.send_bytes(bytes(101))
            pub.send_bytes(b"x" * 100)
            with pytest.raises(MessageTooLarge):
                receive()
            assert receive() == b"x" * 100
        sub.max_message_size = 10  # changed on the handle: still enforced
        pub.send_bytes(bytes(11))
        with pytest.raises(MessageTooLarge):
            sub.recv_bytes()


@pytest.mark.parametrize("serializer", [RAW, None], ids=["raw", "default"])
def test_a_lowered_max_message_size_loses_nothing_after_the_refused_message(url: str, serializer: object) -> None:
    """max_message_size lowered on the handle below the ring's limit: a batch stops before the longer
    message, the next receive raises MessageTooLarge for it alone, and the messages after it still come
    (recv_many used to take them out of the ring with it and lose them when it raised)."""
    opts = {"serializer": serializer} if serializer is not None else {}
    small = [b"a" * 8, b"b" * 8, b"c" * 8, b"d" * 8]
    with ipcraft.publish(url, **opts) as pub, ipcraft.subscribe(url, **opts) as sub:
        sub.max_message_size = 64
        for data in (small[0], bytes(65), *small[1:]):
            pub.send(data)
        assert sub.recv_many(10) == small[:1]
        with pytest.raises(MessageTooLarge) as caught:
            sub.recv_many(10)
        assert caught.value.limit == 64
        assert sub.recv_many(10) == small[1:]
        for receive in (sub.recv, sub.recv_bytes):  # and one at a time
            pub.send_bytes(bytes(65))
            pub.send_bytes(small[0])
            with pytest.raises(MessageTooLarge):
                receive()
            assert sub.recv_bytes() == small[0]


def test_a_bad_max_message_size_is_refused_and_changes_nothing(url: str) -> None:
    """A max_message_size that is not an integer from 1 to 2**32 - 1 raises before the handle or the
    port's fast-path limit change: both keep refusing what they refused before."""
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url) as sub:
        sub.max_message_size = 16
        for bad, error in ((0, ValueError), (-1, ValueError), (2**32, ValueError), (True, TypeError),
                           ("64", TypeError), (16.0, TypeError)):
            with pytest.raises(error):
                sub.max_message_size = bad  # type: ignore[assignment]
        assert sub.max_message_size == 16
        pub.send_bytes(bytes(17))
        pub.send_bytes(bytes(16))
        with pytest.raises(MessageTooLarge):
            sub.recv_bytes()
        assert sub.recv_bytes() == bytes(16)


def test_a_subscriber_that_gave_out_its_fileno_receives_by_the_general_path(url: str) -> None:
    """After fileno(), try_recv takes nothing (the general path re-arms the fd), and the fd becomes
    readable for each publication."""
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url) as sub:
        fd = sub.fileno()
        pub.send_bytes(b"one")
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert _native_port(sub).try_recv() is None
        assert sub.recv_bytes() == b"one"
        assert select.select([fd], [], [], 0)[0] == []
        pub.send_bytes(b"two")
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert sub.recv_bytes() == b"two"


def test_fast_paths_refuse_the_wrong_side_and_bad_arguments(url: str) -> None:
    """A publisher's port receives nothing and a subscriber's publishes nothing (False / None / 0 / []);
    a serializer id out of range is a ValueError, a wrong count of arguments a TypeError."""
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url) as sub:
        p, s = _native_port(pub), _native_port(sub)
        assert s.try_send(b"x") is False and s.try_send_many([b"x"]) == 0
        assert p.try_recv() is None and p.try_recv_many(5) == []
        assert p.try_send(object()) is False  # not bytes-like: the general path raises
        with pytest.raises(ValueError):
            p.try_send(b"x", 256)
        with pytest.raises(TypeError):
            p.try_send_many()
        with pytest.raises(TypeError):
            p.try_send_many(5)
        assert not sub.poll()


def _publish_many_in_child(url: str, n: int) -> int:
    with ipcraft.publish(url, create=False, serializer=RAW) as pub:
        _wait_subscribers(pub, 1)
        return sum(pub.send_many([_message(i, 8 + i % 60) for i in range(start, min(n, start + 100))])
                   for start in range(0, n, 100))


def test_aio_send_many_and_recv_many(url: str) -> None:
    """ipcraft.aio: send_many waits for room in block mode without blocking the loop (a task drains
    meanwhile), recv_many takes batches in order, from this process and from a publisher process."""
    async def main() -> tuple[list[int], list[int]]:
        pub = await ipcraft.aio.publish(url, on_slow="block", capacity=4096, slow_timeout=30, serializer=RAW)
        sub = await ipcraft.aio.subscribe(url, serializer=RAW)
        got: list[int] = []

        async def drain(n: int) -> None:
            while len(got) < n:
                got.extend(_check(m) for m in await sub.recv_many(50, timeout=30))

        task = asyncio.create_task(drain(500))
        assert await pub.send_many([_message(i, 40) for i in range(500)], timeout=30) == 500
        await asyncio.wait_for(task, 30)
        mine = list(got)
        got.clear()
        kid = Child(_publish_many_in_child, url, 2000)
        await drain(2000)
        assert kid.result(timeout=60) == 2000
        sub.close()
        pub.close()
        return mine, got

    mine, theirs = asyncio.run(main())
    assert mine == list(range(500)) and theirs == list(range(2000))


def test_after_fileno_every_receive_that_finds_nothing_rearms_the_fd(url: str) -> None:
    """recv(), recv_bytes() and recv_many() of a subscriber that gave out its fileno(): each message
    makes the fd readable, and once everything is taken it is not readable any more."""
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url) as sub:
        fd = sub.fileno()
        for receive in (lambda: [sub.recv()], lambda: [sub.recv_bytes()], lambda: sub.recv_many(10)):
            pub.send_bytes(b"m")
            assert select.select([fd], [], [], 5)[0] == [fd]
            assert receive() == [b"m"]
            with pytest.raises(Timeout):
                sub.recv(timeout=0)
            assert select.select([fd], [], [], 0)[0] == []
