"""Bad input on unix:// channels (issue 2): each a typed error, the object still usable or cleanly closed.

Frames are forged over a raw AF_UNIX socket that passes the listener's one-byte credential verdict,
so the channel receives exactly the bytes each test wants.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

import ipcraft
from ipcraft._framing import HEADER, MAGIC, header
from ipcraft.errors import (
    AuthenticationError,
    Busy,
    ChannelClosed,
    HandleClosed,
    InvalidEndpoint,
    MessageTooLarge,
    PeerVanished,
    ProtocolError,
    Timeout,
)
from ipcraft.serializers import JSON, MSGPACK
from ipcraft.testing import Child, unique_name

MiB = 1 << 20


@pytest.fixture()
def abstract_url() -> str:
    return f"unix:@{unique_name('core')}"


def raw_client(url: str) -> socket.socket:
    """A bare socket connected to the listener at abstract ``url``; the verdict is read by accepted()."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(b"\0" + url.split("@", 1)[1].encode())
    return s


def accepted(listener: Any, raw: socket.socket) -> Any:
    ch = listener.accept(timeout=10)
    assert raw.recv(1) == b"\x01", "the listener did not admit the raw client"
    return ch


@pytest.fixture()
def forged(abstract_url: str) -> Iterator[tuple[socket.socket, Any]]:
    """(raw socket, the channel accepted for it) on a listener with max_message_size = 1 MiB."""
    with ipcraft.listen(abstract_url, max_message_size=MiB) as listener:
        raw = raw_client(abstract_url)
        ch = accepted(listener, raw)
    try:
        yield raw, ch
    finally:
        ch.close()
        raw.close()


def frame(payload: bytes, sid: int = MSGPACK.id) -> bytes:
    return header(sid, len(payload)) + payload


def pair(url: str, **opts: Any) -> tuple[Any, Any, Any]:
    """(listener, client, server) connected over ``url``."""
    listener = ipcraft.listen(url, **opts)
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(listener.accept(timeout=10)))
    t.start()
    client = ipcraft.connect(url, timeout=10, **opts)
    t.join(15)
    return listener, client, box[0]


# -- URLs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: ipcraft.connect("unix:///tmp/x?bogus=1"), "valid: .*max_message_size"),
    (lambda: ipcraft.listen("unix:@x", authkey=b"k"), "no option 'authkey'"),
    (lambda: ipcraft.connect("unx:///tmp/x"), "valid schemes: .*unix"),
    (lambda: ipcraft.connect("unix://tmp/x"), "absolute path"),
    (lambda: ipcraft.connect("mq://jobs"), r"queue scheme.*ipcraft.queue\(\)"),
    (lambda: ipcraft.queue("unix:///tmp/x"), r"connection scheme.*connect\(\)/listen\(\)"),
    (lambda: ipcraft.listen("unix:///tmp/x?max_message_size=big"), "bad value 'big'"),
])
def test_malformed_url_or_option(call: Any, match: str) -> None:
    """A malformed URL, an unknown scheme or option, or a scheme of the wrong family: InvalidEndpoint
    naming the valid choices, before anything is created."""
    with pytest.raises(InvalidEndpoint, match=match):
        call()


def test_queue_create_takes_three_values() -> None:
    """create= is True, False or "if_missing", never a guess."""
    with pytest.raises(ValueError, match="if_missing"):
        ipcraft.queue("mq://jobs", create="yes")


def test_socket_path_longer_than_the_kernel_allows(tmp_ipc_dir: str) -> None:
    """A 108-byte path is InvalidEndpoint naming the 107-byte limit; a 107-byte one works."""
    fits = tmp_ipc_dir + "/" + "s" * (107 - len(tmp_ipc_dir) - 1)
    assert len(fits.encode()) == 107
    for call in (lambda: ipcraft.listen(f"unix://{fits}x"), lambda: ipcraft.connect(f"unix://{fits}x"),
                 lambda: ipcraft.listen("unix:@" + "a" * 108)):
        with pytest.raises(InvalidEndpoint, match="the kernel allows 107"):
            call()
    listener, client, server = pair(f"unix://{fits}")
    try:
        client.send("fits")
        assert server.recv(timeout=10) == "fits"
    finally:
        client.close()
        server.close()
        listener.close()
    assert not os.path.exists(fits), "the listener left its socket file behind"


# -- frames from the peer ------------------------------------------------------------------------------

def _send_oversized(url: str, length: int) -> None:
    raw = raw_client(url)
    assert raw.recv(1) == b"\x01"
    raw.sendall(header(MSGPACK.id, length))
    zeros = memoryview(bytes(4 * MiB))
    left = length
    while left:
        n = min(left, len(zeros))
        raw.sendall(zeros[:n])
        left -= n
    raw.sendall(frame(MSGPACK.dumps("after the big one")))
    raw.close()


@pytest.mark.timeout(120)
def test_frame_longer_than_max_message_size(abstract_url: str) -> None:
    """A header announcing 3 GiB to a 1 MiB channel raises MessageTooLarge without allocating the
    payload; the 3 GiB are skipped as they arrive and the next message is received intact."""
    with ipcraft.listen(abstract_url, max_message_size=MiB) as listener:
        child = Child(_send_oversized, abstract_url, 3 << 30)
        ch = listener.accept(timeout=10)
    with ch:
        tracemalloc.start()
        try:
            with pytest.raises(MessageTooLarge) as info:
                ch.recv(timeout=10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < MiB, f"receiving the oversized header allocated {peak} bytes"
        assert info.value.size == 3 << 30 and info.value.limit == MiB
        assert "max_message_size" in str(info.value) and str(MiB) in str(info.value)
        assert ch.recv(timeout=60) == "after the big one"
        child.result(60)
        with pytest.raises(ChannelClosed):
            ch.recv(timeout=10)


def test_truncated_frame_then_eof(forged: tuple[socket.socket, Any]) -> None:
    """A frame cut short by the peer's close raises PeerVanished, then ChannelClosed every time after."""
    raw, ch = forged
    raw.sendall(frame(b"whole") + header(MSGPACK.id, 100) + b"only part")
    raw.close()
    assert ch.recv_bytes(timeout=10) == b"whole"
    with pytest.raises(PeerVanished, match="middle of a frame"):
        ch.recv(timeout=10)
    with pytest.raises(ChannelClosed):
        ch.recv(timeout=10)
    assert not ch.closed, "the handle stays open until its owner closes it"


def test_partial_frame_survives_a_timeout(forged: tuple[socket.socket, Any]) -> None:
    """Half a frame then a Timeout: the half is kept, and the frame is whole once the rest arrives."""
    raw, ch = forged
    data = frame(MSGPACK.dumps({"k": "v" * 1000}))
    raw.sendall(data[:600])
    with pytest.raises(Timeout):
        ch.recv(timeout=0.05)
    raw.sendall(data[600:])
    assert ch.recv(timeout=10) == {"k": "v" * 1000}


def test_wrong_serializer_id(forged: tuple[socket.socket, Any]) -> None:
    """A frame of another or an unknown serializer is a ProtocolError naming both; the frame is
    discarded whole, so the stream stays in step and the channel usable."""
    raw, ch = forged
    raw.sendall(frame(JSON.dumps([1, 2]), JSON.id) + frame(b"?", 77) + frame(MSGPACK.dumps("ok")))
    with pytest.raises(ProtocolError, match="json.*msgpack"):
        ch.recv(timeout=10)
    with pytest.raises(ProtocolError, match="unknown id 77") as info:
        ch.recv(timeout=10)
    assert not info.value.closed
    assert ch.recv(timeout=10) == "ok" and not ch.closed


def test_bad_magic_closes_the_channel(forged: tuple[socket.socket, Any]) -> None:
    """Bytes that are not a frame header cannot be resynchronised: ProtocolError, and the channel is
    closed (HandleClosed afterwards), never half-broken."""
    raw, ch = forged
    raw.sendall(HEADER.pack(MAGIC ^ 0xFF, MSGPACK.id, 0, 1) + b"x")
    with pytest.raises(ProtocolError, match="magic") as info:
        ch.recv(timeout=10)
    assert info.value.closed and ch.closed
    with pytest.raises(HandleClosed):
        ch.recv(timeout=0)


# -- peers -----------------------------------------------------------------------------------------

def _connect_as_nobody(url: str) -> str:
    os.setgid(65534)
    os.setuid(65534)
    try:
        ipcraft.connect(url, timeout=10)
    except AuthenticationError as exc:
        return str(exc)
    return "connected"


@pytest.mark.timeout(60)
def test_peer_of_another_uid_is_refused(abstract_url: str) -> None:
    """A client running as nobody gets AuthenticationError naming its uid; the listener keeps serving."""
    with ipcraft.listen(abstract_url) as listener:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(listener.accept(timeout=20)))
        t.start()
        refused = Child(_connect_as_nobody, abstract_url).result(20)
        assert "uid 65534 is not allowed" in refused, refused
        with ipcraft.connect(abstract_url, timeout=10) as client:
            t.join(20)
            assert box, "the listener stopped serving after refusing a peer"
            with box[0] as server:
                client.send("me")
                assert server.recv(timeout=10) == "me"
                assert server.peer.uid == os.getuid() and server.peer.pid == os.getpid()
        assert listener._impl.refused == 1


@pytest.mark.timeout(60)
def test_seqpacket_peer_of_another_uid_learns_why() -> None:
    """On unix+seqpacket too the refused client gets the listener's reason (it got "no reason given":
    the verdict and its reason are one record, which a 1-byte receive truncated)."""
    url = f"unix+seqpacket:@{unique_name('core')}"
    with ipcraft.listen(url) as listener:
        child = Child(_connect_as_nobody, url)
        with pytest.raises(Timeout):
            listener.accept(timeout=3)  # refuses the child meanwhile
        refused = child.result(20)
        assert "uid 65534 is not allowed" in refused, refused
        assert listener._impl.refused == 1


def test_send_on_a_closed_channel(abstract_url: str) -> None:
    """Every operation after our own close() is HandleClosed, not ChannelClosed or EBADF."""
    listener, client, server = pair(abstract_url)
    listener.close()
    client.close()
    for op in (lambda: client.send(1), lambda: client.send_bytes(b"x"), lambda: client.recv(),
               client.fileno, lambda: client.poll()):
        with pytest.raises(HandleClosed, match="closed"):
            op()
    with pytest.raises(ChannelClosed):
        server.recv(timeout=10)
    server.close()
    with pytest.raises(HandleClosed):
        listener.accept(timeout=0)


def _send_forever(url: str, go: int) -> None:
    ch = ipcraft.connect(url, timeout=10)
    os.write(go, b"g")
    ch.send_bytes(bytes(64 * MiB))  # blocks: the parent does not read
    time.sleep(60)


@pytest.mark.timeout(60)
def test_peer_killed_mid_message(abstract_url: str) -> None:
    """A peer killed by SIGKILL in the middle of a frame: recv raises PeerVanished promptly, no hang."""
    go_r, go_w = os.pipe()
    with ipcraft.listen(abstract_url) as listener:
        child = Child(_send_forever, abstract_url, go_w)
        os.close(go_w)
        ch = listener.accept(timeout=10)
    with ch:
        assert select.select([go_r], [], [], 10)[0], "the child never started sending"
        os.close(go_r)
        time.sleep(0.2)  # let the socket buffer fill: the child is now blocked inside the frame
        child.kill(signal.SIGKILL)
        child.wait(10)
        t0 = time.monotonic()
        with pytest.raises(PeerVanished):
            ch.recv_bytes(timeout=20)
        assert time.monotonic() - t0 < 15, "recv did not notice the dead peer"


def test_two_threads_receiving_is_busy(abstract_url: str) -> None:
    """A second thread receiving while another waits gets Busy; the first still gets its message."""
    listener, client, server = pair(abstract_url)
    try:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(server.recv(timeout=10)))
        t.start()
        deadline = time.monotonic() + 10
        while not server._receiving.held:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        with pytest.raises(Busy, match="receiving"):
            server.recv(timeout=0)
        with pytest.raises(Busy):
            server.poll(0)
        client.send("first")
        t.join(10)
        assert box == ["first"]
        client.send("usable")
        assert server.recv(timeout=10) == "usable"
    finally:
        client.close()
        server.close()
        listener.close()


def test_listener_accept_timeout_leaves_it_usable(abstract_url: str) -> None:
    """accept(timeout) with nobody connecting raises Timeout; the listener still accepts afterwards."""
    with ipcraft.listen(abstract_url) as listener:
        with pytest.raises(Timeout):
            listener.accept(timeout=0.05)
        raw = raw_client(abstract_url)
        with accepted(listener, raw) as ch:
            raw.sendall(frame(MSGPACK.dumps(1)))
            assert ch.recv(timeout=10) == 1
        raw.close()


@pytest.mark.timeout(60)
def test_send_timeout_says_whether_the_stream_was_cut() -> None:
    """On a byte stream a send that timed out before any byte went out says closed=False, written=0 and
    leaves the channel usable; one cut mid-frame says closed=True with the bytes written, and the
    channel is closed (the stream cannot be resumed there)."""
    reader, writer = ipcraft.pipe(duplex=False)
    with reader, writer:
        cap = 1 << 20
        writer.send_bytes(b"f" * (cap - 100))  # fills the 1 MiB pipe (frame header + payload)
        with pytest.raises(Timeout) as unsent:
            writer.send_bytes(b"g" * 1000, timeout=0.05)
        assert (unsent.value.closed, unsent.value.written) == (False, 0) and not writer.closed
        assert len(reader.recv_bytes(timeout=5)) == cap - 100
        with pytest.raises(Timeout) as cut:
            writer.send_bytes(b"h" * (4 * cap), timeout=0.1)
        assert cut.value.closed and 0 < cut.value.written < 4 * cap + 8
        assert writer.closed
