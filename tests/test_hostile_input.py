"""Hostile and malformed input on the data side: every one is a typed error, nothing is left behind.

Decoding (every serializer), endpoint parsing (names, hosts, option ranges, System V key 0),
max_message_size on message transports, and the memory a frame header can make a receiver reserve.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

import ipcraft
from ipcraft import _framing
from ipcraft.errors import InvalidEndpoint, MessageTooLarge, ProtocolError, Timeout
from ipcraft.primitives.posix_mq import PosixMessageQueue
from ipcraft.serializers import JSON, MSGPACK, PICKLE, RAW
from ipcraft.testing import unique_key, unique_name

# -- 7: every serializer's decode -------------------------------------------------------------------

BAD_PAYLOADS = {
    "msgpack-container-as-map-key": (MSGPACK, b"\x81\x91\x01\x02"),
    "msgpack-truncated": (MSGPACK, b"\x92\x01"),
    "msgpack-reserved-byte": (MSGPACK, b"\xc1"),
    "json-invalid-syntax": (JSON, b"{"),
    "json-deep-nesting": (JSON, b"[" * 200_000 + b"]" * 200_000),
    "json-bad-utf8": (JSON, b'"\xff"'),
    "json-huge-integer": (JSON, b"1" * 50_000),
    "pickle-truncated": (PICKLE, b"\x80\x05\x95"),
    "pickle-unknown-opcode": (PICKLE, b"\xff"),
}


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_decode_turns_any_failure_into_protocol_error_with_cause(name: str, peak_rss) -> None:  # type: ignore[no-untyped-def]
    """Crafted bytes raise ProtocolError from Serializer.decode, the decoder's exception chained; the
    decoder's peak memory stays within 64 MiB."""
    serializer, payload = BAD_PAYLOADS[name]
    with peak_rss(64 * 1024, f"decoding {name}"), pytest.raises(ProtocolError) as info:
        serializer.decode(memoryview(payload))
    assert info.value.__cause__ is not None, "the decoder's own exception is not chained"
    assert serializer.name in str(info.value)


def test_raw_decode_returns_bytes() -> None:
    assert RAW.decode(memoryview(b"\xff\x00")) == b"\xff\x00"


@pytest.mark.parametrize("name", ["msgpack-container-as-map-key", "json-deep-nesting", "json-bad-utf8"])
def test_channel_recv_of_a_crafted_message_is_protocol_error_and_channel_stays_usable(name: str) -> None:
    """Over a real pipe, a crafted payload is a ProtocolError on recv; the next message still arrives."""
    serializer, payload = BAD_PAYLOADS[name]
    a, b = ipcraft.pipe(serializer=serializer)
    with a, b:
        a.send_bytes(payload)  # send_bytes frames it as RAW: resend it with the serializer's id
        raw = b.recv_bytes(timeout=5)
        sock = socket.socket(fileno=os.dup(a.fileno()))
        try:
            sock.sendall(_framing.header(serializer.id, len(raw)) + raw)
        finally:
            sock.close()
        with pytest.raises(ProtocolError):
            b.recv(timeout=5)
        a.send({"ok": 1})
        assert b.recv(timeout=5) == {"ok": 1}


# -- 8: endpoint parsing -----------------------------------------------------------------------------

BAD_ENDPOINTS: list[tuple[str, str, dict[str, object]]] = [
    ("queue", "mq://a\ud800b", {}),
    ("queue", "ring://a\ud800b", {}),
    ("queue", "fifo:///tmp/a\ud800b", {}),
    ("queue", "file:///tmp/a\ud800b", {}),
    ("listen", "unix:@a\ud800b", {}),
    ("listen", "unix+seqpacket:///tmp/a\ud800b", {}),
    ("connect", "tcp://" + "a" * 64 + ".example:1", {"insecure": True}),
    ("connect", ("tcp://" + "a" * 60 + ".") * 5 + "x:1", {"insecure": True}),
    ("listen", "tcp://a\ud800b:0", {"insecure": True}),
    ("connect", "tcp://127.0.0.1:1", {"server_hostname": "a\ud800", "insecure": True}),
    ("queue", "udp://127.0.0.1:0", {"recv_buffer": 2**40}),
    ("listen", "tcp://127.0.0.1:0", {"backlog": 2**40, "insecure": True}),
    ("queue", "mq://{name}", {"maxmsg": 2**40}),
    ("queue", "mq://{name}", {"msgsize": 2**40}),
    ("queue", "mq://{name}", {"max_message_size": 2**40}),
    ("queue", "sysvmq://4242", {"qbytes": 2**70}),
    ("queue", "fifo://{dir}/f", {"pipe_size": 2**40}),
    ("queue", "ring://{name}", {"capacity": 2**60}),
    ("listen", "shm://{name}", {"capacity": 2**31}),
    ("listen", "unix://{dir}/s", {"backlog": 2**40}),
    ("listen", "unix://{dir}/s", {"handshake_timeout": 1e300}),
    ("listen", "unix://{dir}/s", {"allowed_uids": "1,-2"}),
    ("listen", "unix://{dir}/s", {"allowed_uids": [2**40]}),
    ("queue", "unix+dgram://{dir}/d", {"recv_buffer": -1}),
    ("queue", "mq://{name}", {"serializer": 5}),
    ("queue", "sysvmq://0", {}),
    ("queue", "sysvmq://0x0", {}),
]


def _leftovers(tmp: str, name: str) -> list[str]:
    found = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if name in n]
    found += [os.path.join(tmp, n) for n in os.listdir(tmp)]
    try:
        q = PosixMessageQueue.open("/" + name)
    except FileNotFoundError:
        pass
    else:
        q.unlink()
        q.close()
        found.append(f"mq /{name}")
    return found


@pytest.mark.parametrize("case", range(len(BAD_ENDPOINTS)),
                         ids=[ascii(u)[1:40] + "-" + ",".join(o) for _, u, o in BAD_ENDPOINTS])
def test_bad_endpoint_is_invalid_endpoint_and_creates_nothing(case: int, tmp_ipc_dir: str, peak_rss) -> None:  # type: ignore[no-untyped-def]
    """Every malformed address or out-of-range option is an InvalidEndpoint before any object exists
    (peak RSS within 16 MiB: no option value makes anything large)."""
    kind, url, options = BAD_ENDPOINTS[case]
    name = unique_name("hostile")
    url = url.format(name=name, dir=tmp_ipc_dir)
    kwargs: dict[str, object] = dict(options)
    if kind == "queue":
        kwargs["create"] = True
    if kind == "connect":
        kwargs["timeout"] = 1
    with peak_rss(16 * 1024, f"refusing {url!a}"), pytest.raises(InvalidEndpoint):
        getattr(ipcraft, kind)(url, **kwargs).close()
    assert _leftovers(tmp_ipc_dir, name) == []


def test_sysvmq_key_zero_is_refused_with_the_reason() -> None:
    """Key 0 is IPC_PRIVATE: msgget would make a fresh unnamed queue per open, so it is refused."""
    with pytest.raises(InvalidEndpoint, match="IPC_PRIVATE"):
        ipcraft.queue("sysvmq://0", create="if_missing")


# -- 11: max_message_size on receive for every message transport ------------------------------------

@pytest.mark.parametrize("scheme", ["ring", "mq", "sysvmq"])
def test_max_message_size_is_enforced_on_receive(scheme: str, peak_rss) -> None:  # type: ignore[no-untyped-def]
    """A receiver with a smaller max_message_size refuses a larger message (discarded) and stays usable;
    its peak memory stays within 16 MiB."""
    address = str(unique_key()) if scheme == "sysvmq" else unique_name("mms")
    url = f"{scheme}://{address}"
    with ipcraft.queue(url, create=True) as w, ipcraft.queue(url, create=False, max_message_size=100) as r:
        w.send_bytes(b"x" * 1000)
        w.send(b"y" * 1000)
        w.send_bytes(b"small")
        with peak_rss(16 * 1024, f"refusing large messages on {scheme}://"):
            with pytest.raises(MessageTooLarge) as info:
                r.recv_bytes(timeout=5)
            assert info.value.limit == 100
            with pytest.raises(MessageTooLarge):
                r.recv(timeout=5)
        assert r.recv_bytes(timeout=5) == b"small"


# -- 12: memory before payload -----------------------------------------------------------------------

def test_a_frame_header_alone_reserves_no_memory(peak_rss) -> None:  # type: ignore[no-untyped-def]
    """Headers announcing 256 MiB payloads on 3 connections cost the receiver almost nothing until
    bytes arrive: its buffers grow with the data received (peak RSS measured; bound +32 MiB)."""
    pairs = [socket.socketpair() for _ in range(3)]
    readers = [_framing.FrameReader() for _ in pairs]
    try:
        with peak_rss(32 * 1024, "three 256 MiB headers") as growth:
            for a, _ in pairs:
                a.sendall(_framing.header(3, _framing.DEFAULT_MAX_MESSAGE_SIZE) + b"\x00" * 100)
            for (_, b), reader in zip(pairs, readers, strict=True):
                b.setblocking(False)
                while reader.next_frame() is _framing.NEED_DATA:
                    try:
                        n = b.recv_into(reader.buffer())
                    except BlockingIOError:
                        break
                    reader.advance(n)
                assert reader.in_body and reader.buffered == 100
        print(f"peak RSS growth after three 256 MiB headers: {growth.kib} KiB (bound 32768 KiB)", file=sys.stderr)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_large_message_still_arrives_whole_when_buffers_grow() -> None:
    """A 20 MiB message sent in pieces arrives intact through a reader that grows its buffer."""
    payload = bytes(range(256)) * (20 * 4096)
    reader = _framing.FrameReader()
    data = _framing.header(0, len(payload)) + payload + _framing.header(0, 3) + b"end"
    for i in range(0, len(data), 700_001):
        reader.feed(data[i:i + 700_001])
    sid, body = reader.next_frame()  # type: ignore[misc]
    assert (sid, bytes(body)) == (0, payload)
    sid, body = reader.next_frame()  # type: ignore[misc]
    assert (sid, bytes(body)) == (0, b"end")


def test_unix_listener_reserves_nothing_for_announced_lengths(tmp_ipc_dir: str, peak_rss) -> None:  # type: ignore[no-untyped-def]
    """End to end: three raw clients (plain sockets, no ipcraft) each send a frame header announcing
    256 MiB and 100 bytes of it; the listener's channels wait for the rest without reserving it
    (peak RSS of the receiving process within 32 MiB), and stay usable for a good message after."""
    path = os.path.join(tmp_ipc_dir, "mem.sock")
    with ipcraft.listen(f"unix://{path}") as listener:
        clients = []
        channels = []
        try:
            with peak_rss(32 * 1024, "three unix:// peers announcing 256 MiB each") as growth:
                for _ in range(3):
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.connect(path)
                    clients.append(c)
                    ch = listener.accept(timeout=5)
                    channels.append(ch)
                    c.sendall(_framing.header(0, _framing.DEFAULT_MAX_MESSAGE_SIZE) + b"\x00" * 100)
                    with pytest.raises(Timeout):
                        ch.recv_bytes(timeout=0.2)
            print(f"peak RSS growth for three announced 256 MiB payloads: {growth.kib} KiB", file=sys.stderr)
        finally:
            for c in clients:
                c.close()
            for ch in channels:
                ch.close()
