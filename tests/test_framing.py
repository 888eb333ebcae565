"""The sans-I/O frame reader: every way of cutting a byte stream yields the same frames (h11 style)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcraft._framing import (
    END,
    HEADER_SIZE,
    MAGIC,
    MAX_LENGTH,
    NEED_DATA,
    FrameReader,
    check_message_header,
    frame_parts,
    header,
)
from ipcraft.errors import MessageTooLarge, PeerVanished, ProtocolError

TOO_LARGE = "MessageTooLarge"
payloads = st.binary(max_size=300)
frame_lists = st.lists(st.tuples(st.integers(0, 255), payloads), max_size=12)
chunkings = st.lists(st.integers(1, 64), min_size=1, max_size=40)
scratches = st.sampled_from([HEADER_SIZE, 16, 64, 65536])


def stream(frames: list[tuple[int, bytes]]) -> bytes:
    return b"".join(header(sid, len(p)) + p for sid, p in frames)


def drain(reader: FrameReader, out: list[Any]) -> Any:
    """Collect frames until NEED_DATA or END; an oversized frame is recorded as TOO_LARGE."""
    while True:
        # frame_ready() (what poll() relies on) is True exactly when next_frame() will not say NEED_DATA.
        ready = reader.frame_ready()
        try:
            f = reader.next_frame()
        except MessageTooLarge:
            assert ready, "MessageTooLarge was due but frame_ready() said no"
            out.append(TOO_LARGE)
            continue
        assert ready == (f is not NEED_DATA), f"frame_ready() is {ready} but next_frame() gave {f!r}"
        if f is NEED_DATA or f is END:
            return f
        sid, view = f
        out.append((sid, bytes(view)))


def feed_in_chunks(data: bytes, chunks: list[int], reader: FrameReader) -> tuple[list[Any], Any]:
    out: list[Any] = []
    pos, i = 0, 0
    last: Any = NEED_DATA
    while pos < len(data):
        n = chunks[i % len(chunks)]
        i += 1
        reader.feed(data[pos:pos + n])
        pos += n
        last = drain(reader, out)
    reader.feed(b"")
    last = drain(reader, out)
    return out, last


def read_in_chunks(data: bytes, chunks: list[int], reader: FrameReader) -> tuple[list[Any], Any]:
    """Drive the reader as a channel does: the 'kernel' writes at most n bytes into buffer()."""
    out: list[Any] = []
    pos, i = 0, 0
    while pos < len(data):
        dst = reader.buffer()
        assert len(dst) > 0, "buffer() returned an empty area"
        n = min(len(dst), chunks[i % len(chunks)], len(data) - pos)
        i += 1
        dst[:n] = data[pos:pos + n]
        reader.advance(n)
        pos += n
        drain(reader, out)
    reader.advance(0)
    return out, drain(reader, out)


def test_frames_fed_whole() -> None:
    """Several frames fed in one piece come out whole and in order, then END at a clean EOF."""
    frames = [(3, b"hello"), (0, b""), (2, b"x" * 1000)]
    r = FrameReader()
    r.feed(stream(frames))
    out: list[Any] = []
    assert drain(r, out) is NEED_DATA and out == frames
    r.feed(b"")
    assert r.next_frame() is END and r.next_frame() is END


def test_frames_fed_byte_by_byte() -> None:
    """Fed one byte at a time, the reader yields each frame exactly when its last byte arrives."""
    frames = [(3, b"ab"), (1, b""), (0, bytes(range(40)))]
    out, last = feed_in_chunks(stream(frames), [1], FrameReader(scratch_size=16))
    assert out == frames and last is END


def test_trailing_partial_frame_waits() -> None:
    """Complete frames followed by part of the next: the complete ones come out, then NEED_DATA."""
    data = stream([(3, b"one"), (3, b"two")]) + header(3, 10) + b"par"
    r = FrameReader()
    r.feed(data)
    out: list[Any] = []
    assert drain(r, out) is NEED_DATA
    assert out == [(3, b"one"), (3, b"two")] and r.in_frame and r.buffered == HEADER_SIZE + 3
    r.feed(b"t-frame")
    assert drain(r, out) is NEED_DATA and out[-1] == (3, b"part-frame")


@settings(max_examples=200, deadline=None)
@given(frames=frame_lists, chunks=chunkings, scratch=scratches)
def test_random_chunking_through_feed(frames: list[tuple[int, bytes]], chunks: list[int], scratch: int) -> None:
    """However feed() cuts the stream, the same frames come out, then END."""
    out, last = feed_in_chunks(stream(frames), chunks, FrameReader(scratch_size=scratch))
    assert out == frames and last is END


@settings(max_examples=200, deadline=None)
@given(frames=frame_lists, chunks=chunkings, scratch=scratches)
def test_random_chunking_through_buffer_advance(frames: list[tuple[int, bytes]], chunks: list[int],
                                                scratch: int) -> None:
    """Reading into buffer() in random amounts (the zero-copy path) yields the same frames, then END."""
    out, last = read_in_chunks(stream(frames), chunks, FrameReader(scratch_size=scratch))
    assert out == frames and last is END


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=120)), max_size=10),
       chunks=chunkings, scratch=scratches, via_buffer=st.booleans())
def test_oversized_frames_are_skipped(frames: list[tuple[int, bytes]], chunks: list[int], scratch: int,
                                      via_buffer: bool) -> None:
    """A frame over max_message_size raises MessageTooLarge once; its payload is skipped and the rest
    of the stream still comes out intact."""
    limit = 50
    expected = [f if len(f[1]) <= limit else TOO_LARGE for f in frames]
    reader = FrameReader(max_message_size=limit, scratch_size=scratch)
    run = read_in_chunks if via_buffer else feed_in_chunks
    out, last = run(stream(frames), chunks, reader)
    assert out == expected and last is END


@settings(max_examples=100, deadline=None)
@given(frames=frame_lists, chunks=chunkings, scratch=scratches, data=st.data())
def test_frame_ready_matches_next_frame(frames: list[tuple[int, bytes]], chunks: list[int], scratch: int,
                                        data: st.DataObject) -> None:
    """frame_ready() is True exactly when next_frame() returns a frame or END (what poll() relies on)."""
    raw = stream(frames)
    cut = data.draw(st.integers(0, len(raw)))
    eof = data.draw(st.booleans())
    r = FrameReader(scratch_size=scratch)
    r.feed(raw[:cut])
    if eof:
        r.feed(b"")
    while True:
        ready = r.frame_ready()
        try:
            f = r.next_frame()
        except (PeerVanished, MessageTooLarge, ProtocolError):
            assert ready, "an error was due but frame_ready() said no"
            return
        assert ready == (f is not NEED_DATA), f"frame_ready()={ready} but next_frame() gave {f!r}"
        if f is NEED_DATA or f is END:
            return


def test_announced_length_is_checked_before_allocation() -> None:
    """A header announcing 3 GiB over a 1 MiB limit raises at once, without allocating the payload."""
    r = FrameReader(max_message_size=1 << 20)
    r.feed(header(3, 3 << 30))
    with pytest.raises(MessageTooLarge) as info:
        r.next_frame()
    assert info.value.size == 3 << 30 and info.value.limit == 1 << 20
    assert "1048576" in str(info.value) and "max_message_size" in str(info.value)
    assert r._body is None and len(r._scratch) <= 65536


def test_truncated_frame_then_eof_is_peer_vanished() -> None:
    """A stream that ends inside a frame (header or payload) raises PeerVanished, never a short frame."""
    for cut in (1, 5, HEADER_SIZE, HEADER_SIZE + 50):
        r = FrameReader()
        r.feed((header(3, 100) + bytes(100))[:cut])
        assert r.next_frame() is NEED_DATA
        r.feed(b"")
        with pytest.raises(PeerVanished, match="middle of a frame"):
            r.next_frame()


def test_truncated_large_body_then_eof_is_peer_vanished() -> None:
    """The same for a payload being read in place (larger than the scratch buffer)."""
    r = FrameReader(scratch_size=16)
    r.feed(header(3, 1000) + bytes(500))
    assert r.next_frame() is NEED_DATA
    r.feed(b"")
    with pytest.raises(PeerVanished):
        r.next_frame()


@pytest.mark.parametrize("bad", [
    struct.pack("<BBHI", 0x00, 3, 0, 1) + b"x",
    struct.pack("<BBHI", ord("I"), 3, 0, 1) + b"x",  # b"IPCRAFT": a peer expecting the TCP handshake
    struct.pack("<BBHI", MAGIC, 3, 1, 1) + b"x",
    struct.pack("<BBHI", MAGIC, 3, 0x8000, 1) + b"x",
], ids=["zero-magic", "handshake-bytes", "flag-1", "flag-high"])
def test_bad_magic_or_flags_is_protocol_error(bad: bytes) -> None:
    """A header with another magic or unknown flags raises ProtocolError (from feed or next_frame)."""
    r = FrameReader()
    with pytest.raises(ProtocolError):
        r.feed(bad)
        r.next_frame()


def test_bad_magic_is_refused_on_its_first_byte() -> None:
    """A stream whose first byte is not the magic is refused at once: poll() says ready, recv raises."""
    r = FrameReader()
    r.feed(b"G")  # e.g. "GET / HTTP/1.1" sent to the wrong port
    assert r.frame_ready()
    with pytest.raises(ProtocolError, match="magic 0x47"):
        r.next_frame()


def test_header_refuses_lengths_over_the_format() -> None:
    """The 32-bit length field cannot announce more than 4 GiB - 1: MessageTooLarge names the maximum."""
    assert len(header(0, MAX_LENGTH)) == HEADER_SIZE
    with pytest.raises(MessageTooLarge, match=str(MAX_LENGTH)):
        header(0, MAX_LENGTH + 1)


def test_frame_parts_joins_small_and_keeps_large_payloads_uncopied() -> None:
    """Small frames are one buffer; a large payload is sent as header + the caller's own buffer."""
    small = frame_parts(3, memoryview(b"abc"))
    assert small == [header(3, 3) + b"abc"]
    big = memoryview(bytes(100_000))
    parts = frame_parts(3, big)
    assert len(parts) == 2 and parts[0] == header(3, 100_000) and parts[1] is big


def test_check_message_header() -> None:
    """A message transport's whole message must hold exactly the length its header announces."""
    sid, payload = check_message_header(memoryview(header(2, 3) + b"abc"), 100)
    assert sid == 2 and bytes(payload) == b"abc"
    with pytest.raises(ProtocolError, match="shorter than"):
        check_message_header(memoryview(b"\xa1\x02"), 100)
    with pytest.raises(ProtocolError, match="announces 4"):
        check_message_header(memoryview(header(2, 4) + b"abc"), 100)
    with pytest.raises(ProtocolError):
        check_message_header(memoryview(b"\x00" * 8), 100)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=40), st.lists(st.integers(1, 300), min_size=1, max_size=20),
       st.integers(1, 8))
def test_take_frames_yields_what_next_frame_yields(payloads: list[bytes], cuts: list[int], limit: int) -> None:
    """Frames taken in batches (take_frames, then next_frame for the rest) are the frames next_frame alone
    returns, in order, whatever the read boundaries; a batch stops at a partial frame."""
    stream = b"".join(header(i % 3, len(p)) + p for i, p in enumerate(payloads))
    reader = FrameReader(scratch_size=256)
    got: list[tuple[int, bytes]] = []
    pos, k = 0, 0
    while pos < len(stream) or reader.frame_ready():
        if reader.frame_ready():
            reader.take_frames(got, len(got) + limit, lambda sid, v: (sid, v.tobytes()))
            frame = reader.next_frame()
            if isinstance(frame, tuple):
                got.append((frame[0], frame[1].tobytes()))
            continue
        n = min(cuts[k % len(cuts)], len(stream) - pos)
        k += 1
        reader.feed(stream[pos:pos + n])
        pos += n
    assert got == [(i % 3, p) for i, p in enumerate(payloads)]


def test_take_frames_consumes_a_frame_whose_decode_raises_and_keeps_the_rest() -> None:
    reader = FrameReader()
    reader.feed(b"".join(header(0, 1) + bytes([i]) for i in range(4)))
    out: list[int] = []

    def decode(sid: int, v: memoryview) -> int:
        if v[0] == 1:
            raise ProtocolError("refused")
        return v[0]

    with pytest.raises(ProtocolError):
        reader.take_frames(out, 10, decode)
    assert out == [0]
    reader.take_frames(out, 10, decode)
    assert out == [0, 2, 3] and reader.next_frame() is NEED_DATA
