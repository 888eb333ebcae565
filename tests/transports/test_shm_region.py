"""shm://'s shared region: a large reply goes through one region both directions share, and every
receive path reads it; a region the peer holds, a view that keeps it, a hostile record."""

from __future__ import annotations

import pickle
import select
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ipcraft
from ipcraft import _native
from ipcraft._rings import spsc as _ring
from ipcraft.errors import MessageTooLarge, ProtocolError
from ipcraft.testing import Child, unique_name

from .test_shm import connect_when_listening, shm_pair

SIZE = 65536
CLIENT, SERVER = 1, 2


def _owner_word(ch: ipcraft.Channel) -> tuple[Any, int]:
    """White box: the mapping of the connection and the offset of its shared region's owner word."""
    transport = ch._transport  # type: ignore[attr-defined]
    return transport._mm, 2 * _ring.ring_size(transport.capacity) + _ring.SHARED_OFF_OWNER


def owner(ch: ipcraft.Channel) -> Callable[[], int]:
    """A reader of the owner word of the connection's shared region (0: free, 1: the client's
    message, 2: the server's)."""
    mm, at = _owner_word(ch)
    return lambda: int(struct.unpack_from("<I", mm, at)[0])


def hold_region(ch: ipcraft.Channel, who: int) -> None:
    """Mark the region as holding `who`'s message (0 frees it), as the peer's claim would."""
    mm, at = _owner_word(ch)
    struct.pack_into("<I", mm, at, who)


def tx_position(ch: ipcraft.Channel) -> Callable[[], int]:
    """White box (shared with test_busy): a reader of the cursor of the ring `ch` sends into."""
    transport = ch._transport  # type: ignore[attr-defined]
    return lambda: int(transport.tx.native.position)


def request(client: ipcraft.Channel, server: ipcraft.Channel) -> None:
    """A small request from the client, received: the server's next send is a reply."""
    client.send_bytes(b"request")
    assert server.recv_bytes(timeout=10) == b"request"


def test_a_large_reply_goes_through_the_region_and_frees_it_once_received() -> None:
    """A reply of 8 KiB or more puts only an 8-byte record in the ring; the region holds the payload
    (owner = the sender) until the receiver has taken it.  A send that is not a reply, and a small
    reply, go through the ring.  Both directions use the one region."""
    with shm_pair() as (client, server):
        spos, cpos, region = tx_position(server), tx_position(client), owner(server)
        before = spos()
        server.send_bytes(b"a" * SIZE)  # nothing received yet: not a reply
        assert spos() - before == 8 + SIZE and region() == 0
        assert client.recv_bytes(timeout=10) == b"a" * SIZE
        for i in range(3):
            request(client, server)
            before = spos()
            msg = bytes([i]) * SIZE
            server.send_bytes(msg)
            assert spos() - before == 8
            assert region() == SERVER
            assert client.recv_bytes(timeout=10) == msg
            assert region() == 0
            # The client's next message follows a receive: a reply too, through the same region.
            before = cpos()
            client.send_bytes(msg[::-1])
            assert cpos() - before == 8 and region() == CLIENT
            assert server.recv_bytes(timeout=10) == msg[::-1]
            assert region() == 0
            server.send_bytes(b"s" * SIZE)  # a reply to the client's message: the region again
            assert client.recv_bytes(timeout=10) == b"s" * SIZE
            before = spos()
            server.send_bytes(b"u" * SIZE)  # a second send in a row, region free: a stream, the ring
            assert spos() - before == 8 + SIZE and region() == 0
            assert client.recv_bytes(timeout=10) == b"u" * SIZE
        request(client, server)
        before = spos()
        server.send_bytes(b"t" * 4096)  # a small reply: the ring
        assert spos() - before == 8 + 4096 and region() == 0
        assert client.recv_bytes(timeout=10) == b"t" * 4096


def test_a_reply_goes_through_the_ring_while_the_peer_holds_the_region() -> None:
    """A claim that fails (the region holds the other direction's message) costs no wait: the reply
    goes through the ring, whole."""
    with shm_pair() as (client, server):
        spos, region = tx_position(server), owner(server)
        request(client, server)
        hold_region(server, CLIENT)
        before = spos()
        server.send_bytes(b"r" * SIZE)
        assert spos() - before >= 8 + SIZE
        assert client.recv_bytes(timeout=10) == b"r" * SIZE
        assert region() == CLIENT  # not the server's to free
        hold_region(server, 0)
        request(client, server)
        server.send_bytes(b"q" * SIZE)
        assert region() == SERVER
        assert client.recv_bytes(timeout=10) == b"q" * SIZE


def test_a_view_keeps_the_region_until_it_is_released() -> None:
    """recv_view() lends the region's bytes themselves: the region stays the sender's until the view
    is released, and meanwhile the peer's reply goes through the ring."""
    with shm_pair() as (client, server):
        region = owner(server)
        request(client, server)
        server.send_bytes(b"v" * SIZE)
        with client.recv_view(timeout=10) as view:
            assert bytes(view) == b"v" * SIZE
            assert region() == SERVER
            client.send_bytes(b"w" * SIZE)  # cannot claim it: through the ring
            assert server.recv_bytes(timeout=10) == b"w" * SIZE
            assert region() == SERVER
        assert region() == 0


def _recv_bytes(ch: ipcraft.Channel, n: int) -> bytes:
    return ch.recv_bytes(timeout=10)


def _recv_bytes_into(ch: ipcraft.Channel, n: int) -> bytes:
    buf = bytearray(n + 16)
    got = ch.recv_bytes_into(buf, 16, timeout=10)
    return bytes(buf[16:16 + got])


def _recv_view(ch: ipcraft.Channel, n: int) -> bytes:
    with ch.recv_view(timeout=10) as view:
        return bytes(view)


def _recv_many(ch: ipcraft.Channel, n: int) -> bytes:
    got = ch.recv_many(8, timeout=10)
    assert len(got) == 1
    return bytes(got[0])


def _recv_after_select(ch: ipcraft.Channel, n: int) -> bytes:
    readable, _, _ = select.select([ch.fileno()], [], [], 10)
    assert readable
    return ch.recv_bytes(timeout=0)


RECEIVERS = [_recv_bytes, _recv_bytes_into, _recv_view, _recv_many, _recv_after_select]


@pytest.mark.parametrize("receive", RECEIVERS, ids=lambda f: f.__name__.lstrip("_"))
@pytest.mark.parametrize("size", [8192, SIZE, 1 << 20])
def test_every_receive_path_reads_a_region_message(receive: Callable[[ipcraft.Channel, int], bytes],
                                                   size: int) -> None:
    """recv_bytes, recv_bytes_into, recv_view, recv_many and a receive after select() all take a
    message from the region whole, and free it."""
    with shm_pair() as (client, server):
        region = owner(server)
        for i in range(3):
            request(client, server)
            msg = np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8).tobytes()
            server.send_bytes(msg)
            assert region() == SERVER
            assert receive(client, size) == msg
            assert region() == 0


def test_objects_and_pickle_buffers_cross_through_the_region() -> None:
    """send()/recv() of a large object, and of a numpy array whose buffer travels out of band, take
    the region too."""
    with shm_pair() as (client, server):
        region = owner(server)
        request(client, server)
        obj = {"xs": list(range(5000))}
        assert len(pickle.dumps(obj)) >= 8192
        server.send(obj)
        assert region() == SERVER
        assert client.recv(timeout=10) == obj
        assert region() == 0
        request(client, server)
        arr = np.arange(100_000, dtype=np.float64)
        server.send(arr)
        got = client.recv(timeout=10)
        assert np.array_equal(got, arr)
        assert region() == 0


def test_a_region_message_over_the_limit_is_refused_and_frees_the_region() -> None:
    """A receiver whose max_message_size is below a region message raises MessageTooLarge, drops it
    and frees the region; the next one arrives."""
    url = f"shm://{unique_name('region')}"
    with ipcraft.listen(url) as lst:
        box: list[ipcraft.Channel] = []
        t = threading.Thread(target=lambda: box.append(lst.accept(10)))
        t.start()
        try:
            client = ipcraft.connect(url, timeout=10, max_message_size=16384)
        finally:
            t.join()
    with client, box[0] as server:
        region = owner(server)
        request(client, server)
        server.send_bytes(b"L" * SIZE)
        assert region() == SERVER
        with pytest.raises(MessageTooLarge):
            client.recv_bytes(timeout=10)
        assert region() == 0
        request(client, server)
        server.send_bytes(b"k" * 16000)
        assert region() == SERVER
        assert client.recv_bytes(timeout=10) == b"k" * 16000


def _publish_server_record(server: ipcraft.Channel, flags: int, length: int) -> None:
    """White box: append a raw record header to the server's ring towards the client and publish it."""
    transport = server._transport  # type: ignore[attr-defined]
    ring, pos = _ring.ring_size(transport.capacity), int(transport.tx.native.position)
    at = ring + _ring.HEADER_SIZE + pos % transport.capacity
    struct.pack_into("<BBHI", transport._mm, at, _ring.REC_MAGIC, 0, flags, length)
    _native.atomic_store_u64(transport._mm, ring + _ring.OFF_HEAD, pos + 8)


def test_a_hostile_region_record_is_a_protocol_error() -> None:
    """A SHARED record claiming more than the region holds is ProtocolError, not a read past it."""
    with shm_pair(capacity=4096) as (client, server):
        request(client, server)
        _publish_server_record(server, _ring.REC_FLAG_SHARED, 4096 // 2 + 8)
        with pytest.raises(ProtocolError, match="corrupt"):
            client.recv_bytes(timeout=1)


def _duplex_peer(url: str, n: int) -> int:
    """Send n messages while receiving n, in two threads; return how many arrived whole."""
    with ipcraft.listen(url) as lst, lst.accept(10) as ch:
        return _duplex(ch, n, seed=2)


def _duplex(ch: ipcraft.Channel, n: int, seed: int) -> int:
    sizes = np.random.default_rng(seed).integers(8192, 300_000, n)

    def send() -> None:
        for i, size in enumerate(sizes):
            ch.send_bytes(message(seed, i, int(size)))

    sender = threading.Thread(target=send)
    sender.start()
    whole = 0
    other = 3 - seed
    other_sizes = np.random.default_rng(other).integers(8192, 300_000, n)
    for i in range(n):
        whole += ch.recv_bytes(timeout=20) == message(other, i, int(other_sizes[i]))
    sender.join(20)
    return whole


def message(seed: int, i: int, size: int) -> bytes:
    return (bytes([seed, i % 256]) * (size // 2 + 1))[:size]


def test_both_directions_contend_for_the_region_and_every_message_arrives_whole() -> None:
    """Two processes each sending and receiving large messages at once: a send is a reply whenever
    a receive came between, so both sides may race to claim the region, and the loser uses its ring.
    Every message arrives whole and in order, in both directions."""
    n, url = 300, f"shm://{unique_name('region')}"
    child = Child(_duplex_peer, url, n)
    with connect_when_listening(url) as ch:
        assert _duplex(ch, n, seed=1) == n
    assert child.result(60) == n


def test_asyncio_receives_region_messages() -> None:
    """ipcraft.aio over shm:// (the event loop waits on the channel's eventfd, then receives): large
    replies in both directions cross through the region whole and free it."""
    import asyncio

    from ipcraft import aio

    url = f"shm://{unique_name('region')}"

    async def main() -> None:
        listener = await aio.listen(url)
        try:
            server, client = await asyncio.gather(listener.accept(timeout=10), aio.connect(url, timeout=10))
        finally:
            listener.close()
        with server, client:
            region = owner(server._sync)  # type: ignore[attr-defined]
            await client.send_bytes(b"request")
            assert await server.recv_bytes(timeout=10) == b"request"
            for i in range(5):
                msg = bytes([i]) * SIZE
                await server.send_bytes(msg)
                assert region() == SERVER
                assert await client.recv_bytes(timeout=10) == msg
                assert region() == 0
                await client.send_bytes(msg[::-1])
                assert region() == CLIENT
                assert await server.recv_bytes(timeout=10) == msg[::-1]
                assert region() == 0

    asyncio.run(asyncio.wait_for(main(), 30))
