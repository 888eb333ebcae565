"""ipcraft.aio: the asyncio mirror over real sockets, pipes and processes."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import ipcraft
from ipcraft import aio
from ipcraft._framing import frame_parts
from ipcraft.errors import Busy, ChannelClosed, HandleClosed, MessageTooLarge, Timeout
from ipcraft.testing import Child


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _pair(url: str) -> tuple[aio.Listener, aio.Channel, aio.Channel]:  # type: ignore[type-arg]
    listener = await aio.listen(url)
    server, client = await asyncio.gather(listener.accept(timeout=10), aio.connect(url, timeout=10))
    return listener, server, client


@pytest.mark.timeout(60)
def test_unix_round_trip_iteration_and_context_managers(tmp_ipc_dir: str) -> None:
    """unix://: objects and bytes both ways, async for until the peer closes, async with closes."""
    url = f"unix://{tmp_ipc_dir}/a.sock"

    async def main() -> None:
        listener, server, client = await _pair(url)
        async with listener, server, client:
            await client.send({"n": 1})
            await client.send_bytes(b"raw", 1)
            assert await server.recv(timeout=5) == {"n": 1}
            assert await server.recv_bytes(timeout=5) == b"aw"
            await server.send([1, 2, 3])
            buf = bytearray(64)
            n = await client.recv_bytes_into(buf, timeout=5)
            assert ipcraft.MSGPACK.loads(buf[:n]) == [1, 2, 3]
            assert not await server.poll(0)
            for i in range(3):
                await client.send(i)
            assert await server.poll(5)
            client.close()
            assert [m async for m in server] == [0, 1, 2]
        assert server.closed and listener.closed

    run(main())


@pytest.mark.timeout(60)
def test_large_messages_both_ways_do_not_block_the_loop(tmp_ipc_dir: str) -> None:
    """16 MiB each way at once: sends wait in add_writer between partial writes; frames stay whole."""
    url = f"unix://{tmp_ipc_dir}/big.sock"
    big = os.urandom(1 << 20) * 16

    async def main() -> None:
        listener, server, client = await _pair(url)
        with listener, server, client:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())
            _, _, got_s, got_c = await asyncio.gather(
                client.send_bytes(big, timeout=20), server.send_bytes(big, timeout=20),
                server.recv_bytes(timeout=20), client.recv_bytes(timeout=20))
            t.cancel()
            assert got_s == big and got_c == big
            assert ticks > 1  # the loop kept running while the transfers waited

    run(main())


@pytest.mark.timeout(60)
def test_seqpacket_messages() -> None:
    """unix+seqpacket:// (a message transport): send and recv whole messages."""
    url = f"unix+seqpacket:@{ipcraft.testing.unique_name('aioseq')}"

    async def main() -> None:
        listener, server, client = await _pair(url)
        with listener, server, client:
            for i in range(50):
                await client.send_bytes(bytes([i]) * (i * 1000))
            for i in range(50):
                assert await server.recv_bytes(timeout=5) == bytes([i]) * (i * 1000)
            with pytest.raises(Timeout):
                await server.recv(timeout=0.05)

    run(main())


@pytest.mark.timeout(60)
def test_pipe_with_a_forked_child() -> None:
    """aio.pipe(): a forked child runs its own loop on its end and echoes what the parent sends."""
    a, b = aio.pipe()

    def child() -> int:
        a.close()

        async def echo() -> int:
            n = 0
            async for msg in b:
                await b.send(msg)
                n += 1
            return n

        return asyncio.run(echo())

    c = Child(child)
    b.close()

    async def main() -> None:
        for i in range(100):
            await a.send({"i": i, "data": b"x" * i})
            assert await a.recv(timeout=10) == {"i": i, "data": b"x" * i}
        a.close()

    run(main())
    assert c.result(10) == 100


@pytest.mark.timeout(60)
def test_cancelled_recv_mid_frame_leaves_the_channel_usable() -> None:
    """Cancelling a recv that holds half a frame keeps those bytes: the next recv gets the message."""
    reader, writer = aio.pipe(duplex=False)
    go_r, go_w = os.pipe()
    frame = b"".join(bytes(p) for p in frame_parts(0, memoryview(b"m" * 500_000)))

    def child() -> None:
        reader.close()
        fd = writer.fileno()
        os.set_blocking(fd, True)
        os.write(fd, frame[:200_000])
        os.read(go_r, 1)
        os.write(fd, frame[200_000:])

    c = Child(child)

    async def main() -> None:
        task = asyncio.create_task(reader.recv_bytes())
        deadline = time.monotonic() + 10
        fr = reader._sync._port.reader  # the FramedStream over the pipe
        while fr.buffered < 150_000 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert fr.in_frame  # the recv really holds half a frame when it is cancelled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        os.write(go_w, b"g")
        assert await reader.recv_bytes(timeout=10) == b"m" * 500_000
        with pytest.raises(ChannelClosed):
            await reader.recv(timeout=10)

    try:
        writer.close()
        run(main())
        c.result(10)
    finally:
        reader.close()
        os.close(go_r)
        os.close(go_w)


@pytest.mark.timeout(60)
def test_cancelled_recv_then_message_arrives() -> None:
    """A cancelled pending recv consumes nothing: the next message goes to the next recv."""
    async def main() -> None:
        a, b = aio.pipe()
        with a, b:
            task = asyncio.create_task(b.recv())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await a.send("after")
            assert await b.recv(timeout=5) == "after"

    run(main())


@pytest.mark.timeout(60)
def test_timeouts_busy_and_close_while_waiting() -> None:
    """recv times out cleanly; a second concurrent recv is Busy; close() wakes a waiter with HandleClosed."""
    async def main() -> None:
        a, b = aio.pipe()
        with a:
            with pytest.raises(Timeout):
                await b.recv(timeout=0.05)
            first = asyncio.create_task(b.recv())
            await asyncio.sleep(0.02)
            with pytest.raises(Busy):
                await b.recv(timeout=1)
            b.close()
            with pytest.raises(HandleClosed):
                await first
            with pytest.raises(HandleClosed):
                await b.send(1)

    run(main())


@pytest.mark.timeout(60)
def test_stream_send_cut_mid_frame_closes_but_unsent_send_does_not() -> None:
    """A send that timed out before any byte went out leaves the channel usable; mid-frame closes it."""
    async def main() -> None:
        reader, writer = aio.pipe(duplex=False)
        with reader, writer:
            cap = 1 << 20
            await writer.send_bytes(b"f" * (cap - 100))  # fills the 1 MiB pipe (frame header + payload)
            with pytest.raises(Timeout, match="timed out") as unsent:
                await writer.send_bytes(b"g" * 1000, timeout=0.05)
            assert (unsent.value.closed, unsent.value.written) == (False, 0)
            assert not writer.closed
            assert len(await reader.recv_bytes(timeout=5)) == cap - 100
            with pytest.raises(Timeout, match="mid-frame") as cut:
                await writer.send_bytes(b"h" * (4 * cap), timeout=0.1)
            assert cut.value.closed and 0 < cut.value.written < 4 * cap + 8
            assert writer.closed

    run(main())


@pytest.mark.timeout(60)
def test_worker_thread_path_for_fdless_mechanisms() -> None:
    """In thread mode (mechanisms without an fd) recv waits in a worker; cancellation loses nothing."""
    async def main() -> None:
        a, b = aio.pipe()
        with a, b:
            b._thread_mode = True  # what a System V queue gets: no fd to hand to the loop
            task = asyncio.create_task(b.recv())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, a._sync.send, "late")
            assert await b.recv(timeout=5) == "late"
            with pytest.raises(Timeout):
                await b.recv(timeout=0.1)

    run(main())


@pytest.mark.timeout(60)
def test_listener_timeout_close_and_iteration(tmp_ipc_dir: str) -> None:
    """accept times out cleanly; async for over a listener ends when it is closed."""
    url = f"unix://{tmp_ipc_dir}/l.sock"

    async def main() -> None:
        listener = await aio.listen(url)
        with pytest.raises(Timeout):
            await listener.accept(timeout=0.05)
        got = []

        async def serve() -> None:
            async for ch in listener:
                got.append(await ch.recv(timeout=5))
                ch.close()

        task = asyncio.create_task(serve())
        for i in range(3):
            async with await aio.connect(url, timeout=5) as c:
                await c.send(i)
        while len(got) < 3:
            await asyncio.sleep(0.01)
        listener.close()
        await asyncio.wait_for(task, 5)
        assert got == [0, 1, 2]
        assert not os.path.exists(f"{tmp_ipc_dir}/l.sock")

    run(main())


def _echo_shm(url: str) -> str:
    with ipcraft.connect(url) as c:
        for m in c:
            c.send(m)
    return "done"


@pytest.mark.timeout(60)
def test_shm_channel_round_trips_through_its_eventfd() -> None:
    """aio over shm://: objects round-trip through the ring while the event loop waits on its fd."""
    from ipcraft.testing import unique_name

    url = f"shm://{unique_name('aio')}"

    async def main() -> None:
        listener = await aio.listen(url)
        try:
            child = Child(_echo_shm, url)
            ch = await listener.accept(timeout=10)
            for i in range(200):
                await ch.send({"i": i, "b": b"x" * i})
                assert await ch.recv(timeout=10) == {"i": i, "b": b"x" * i}
            ch.close()
            assert child.result(10) == "done"
        finally:
            listener.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["mq", "sysvmq", "ring"])
def test_queues_send_and_a_pending_recv_completes(scheme: str) -> None:
    """aio.queue for the kernel and shared-memory queues: a recv awaiting an empty queue completes
    when a message arrives, and a timed one raises Timeout with the queue still usable."""
    from ipcraft.testing import unique_key, unique_name

    url = f"sysvmq://{unique_key()}" if scheme == "sysvmq" else f"{scheme}://{unique_name('aq')}"

    async def main() -> None:
        q = await aio.queue(url, create=True)
        try:
            await q.send_bytes(b"first")
            assert await q.recv_bytes(timeout=5) == b"first"
            pending = asyncio.create_task(q.recv_bytes(timeout=5))
            await asyncio.sleep(0.05)
            assert not pending.done()
            await q.send_bytes(b"later")
            assert await pending == b"later"
            with pytest.raises(Timeout):
                await q.recv_bytes(timeout=0.05)
            await q.send(["still", "usable"])
            assert await q.recv(timeout=5) == ["still", "usable"]
        finally:
            q.close()

    asyncio.run(main())


_MIXED = [b"s" * 64, b"L" * (1 << 20), b"", b"m" * 16385] * 3 + [b"t"] * 2000


def _receive_all(url: str, n: int) -> list[int]:
    with ipcraft.connect(url, timeout=10, serializer="raw", max_message_size=1 << 21) as c:
        got: list[bytes] = []
        while len(got) < n:
            got += c.recv_many(100, timeout=20)
        c.send(b"done")
    return [len(m) for m in got]


@pytest.mark.timeout(60)
def test_send_many_over_a_stream_writes_a_batch_across_many_waits(tmp_ipc_dir: str) -> None:
    """aio send_many over unix:// writes the batch's frames together (small ones joined, large ones
    gathered), more than the socket holds, between add_writer waits; a message over the limit ends
    the batch and raises, the ones before it sent, the channel usable."""
    url = f"unix://{tmp_ipc_dir}/m.sock"

    async def main() -> None:
        listener = await aio.listen(url, serializer="raw", max_message_size=1 << 21)
        try:
            child = Child(_receive_all, url, len(_MIXED) + 2)
            ch = await listener.accept(timeout=10)
            assert await ch.send_many(_MIXED, timeout=20) == len(_MIXED)
            with pytest.raises(MessageTooLarge):
                await ch.send_many([b"a", b"x" * ((1 << 21) + 1), b"never"], timeout=20)
            assert await ch.send_many([b"b"], timeout=20) == 1
            assert await ch.recv(timeout=20) == b"done"
            assert child.result(20) == [len(m) for m in _MIXED] + [1, 1]
            ch.close()
        finally:
            listener.close()

    asyncio.run(main())


def _send_batches(url: str, n: int, per: int) -> int:
    with ipcraft.connect(url, timeout=10) as c:
        for i in range(0, n, per):
            c.send_many([{"i": j} for j in range(i, min(n, i + per))])
        got = c.recv_many(2, timeout=20)  # the parent's two messages: close only after both
        if len(got) < 2:
            got += c.recv_many(1, timeout=20)
        assert got == ["done", "extra"]
    return n


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["shm", "unix"])
def test_batches_send_many_and_recv_many(scheme: str, tmp_ipc_dir: str) -> None:
    """aio send_many/recv_many: a child sends batches of 7 (shm:// fills the ring in C; unix:// one
    by one); the loop gets them in order with recv_many while it waits on the fd, and a recv_many on
    an empty channel times out with the channel still usable."""
    from ipcraft.testing import unique_name

    url = f"shm://{unique_name('aio')}" if scheme == "shm" else f"unix://{tmp_ipc_dir}/b.sock"
    n = 3000

    async def main() -> None:
        listener = await aio.listen(url)
        try:
            child = Child(_send_batches, url, n, 7)
            ch = await listener.accept(timeout=10)
            got: list[object] = []
            while len(got) < n:
                batch = await ch.recv_many(64, timeout=10)
                assert 1 <= len(batch) <= 64
                got += batch
            assert got == [{"i": i} for i in range(n)]
            with pytest.raises(Timeout):
                await ch.recv_many(5, timeout=0.05)
            assert await ch.send_many(["done", "extra"]) == 2
            assert child.result(20) == n
            ch.close()
        finally:
            listener.close()

    asyncio.run(main())
