"""Frames: how messages keep their boundaries on a byte stream.  Sans-I/O: no system calls here.

Header (8 bytes, little-endian, ``<BBHI``)::

    offset 0  magic     0xA1: ipcraft frame format version 1.  Anything else is not ipcraft talking
                        (or a peer that expects the authkey handshake), so it is a ProtocolError.
    offset 1  sid       the serializer's wire id (ipcraft.serializers), checked by the channel.
    offset 2  flags     reserved, must be 0 (a receiver refuses what it does not understand).
    offset 4  length    payload length in bytes, at most 2**32 - 1.

Message transports (seqpacket, datagrams, message queues, rings) carry the same header in front of
each message so that the serializer id travels everywhere; there the length must equal the rest of
the message.

The receiver checks ``length`` against ``max_message_size`` *before* allocating anything.  An
oversized frame raises MessageTooLarge and its payload is then skipped as it arrives, in bounded
chunks, so the channel stays usable.  Memory follows the bytes that arrived, never the length a
header announces: a large payload's buffer starts at ``BODY_START`` bytes (or the reused buffer) and
doubles as it fills, so a peer that sends a header claiming 256 MiB and then nothing costs the
receiver at most ``BODY_START``.

Receive path design: a 64 KiB scratch buffer takes whatever the kernel has, so one read usually
returns many small frames (fewer system calls than reading header and payload separately).  A payload
too large for the scratch gets its own buffer and is read straight into it, so a message up to
``BODY_START`` (or one that fits the reused buffer) is copied once by the kernel and never again here;
a larger one is copied once more per doubling (at most its size again in total).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from .errors import MessageTooLarge, PeerVanished, ProtocolError

_T = TypeVar("_T")

HEADER: Final = struct.Struct("<BBHI")
HEADER_SIZE: Final = HEADER.size
MAGIC: Final = 0xA1
MAX_LENGTH: Final = 2**32 - 1
#: Default ceiling for one message, receiving and sending, unless a channel is told otherwise.
DEFAULT_MAX_MESSAGE_SIZE: Final = 256 * 1024 * 1024
SCRATCH_SIZE: Final = 64 * 1024
#: Frames up to this payload size are written as one joined buffer (a copy is cheaper than a gather).
JOIN_MAX: Final = 16384
_JOIN_LIMIT: Final = 256 * 1024
#: Payloads up to this size are read into one buffer kept by the reader between messages.
BODY_REUSE_MAX: Final = 4 * 1024 * 1024
#: A large payload's buffer starts this big and doubles as bytes arrive (up to the announced length).
BODY_START: Final = 1024 * 1024

_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: next_frame() needs more bytes.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: next_frame(): the stream ended cleanly at a frame boundary.
END: Final = _Sentinel("END")

Frame = tuple[int, memoryview]
NextFrame = Frame | _Sentinel


def header(sid: int, length: int) -> bytes:
    """The 8-byte header for a ``length``-byte payload made by serializer ``sid``."""
    if length > MAX_LENGTH:
        raise MessageTooLarge(f"a {length}-byte message exceeds the frame format's maximum of "
                              f"{MAX_LENGTH} bytes", length, MAX_LENGTH)
    return _pack(MAGIC, sid, 0, length)


def parse_header(buf: memoryview | bytes, max_message_size: int) -> tuple[int, int]:
    """Validate an 8-byte header; return ``(sid, length)``.

    Raises ProtocolError for a bad magic or flags.  The size check is the caller's, so that it can
    choose between skipping and refusing.
    """
    magic, sid, flags, length = _unpack_from(buf)
    if magic != MAGIC:
        raise _bad_magic(magic)
    if flags:
        raise ProtocolError(f"frame flags 0x{flags:04x} are not understood by this version")
    return sid, length


def _bad_magic(magic: int) -> ProtocolError:
    return ProtocolError(f"bad frame magic 0x{magic:02x} (expected 0x{MAGIC:02x}): the peer is not "
                         "speaking ipcraft's frame format, or expects a handshake this side skipped")


def check_message_header(msg: memoryview, max_message_size: int) -> tuple[int, memoryview]:
    """Split one whole message of a message transport into ``(sid, payload)``, validating it."""
    if len(msg) < HEADER_SIZE:
        raise ProtocolError(f"a {len(msg)}-byte message is shorter than the {HEADER_SIZE}-byte header")
    sid, length = parse_header(msg, max_message_size)
    if length != len(msg) - HEADER_SIZE:
        raise ProtocolError(f"the header announces {length} bytes but the message carries "
                            f"{len(msg) - HEADER_SIZE}")
    return sid, msg[HEADER_SIZE:]


class FrameReader:
    """Turns a byte stream into frames.

    Drive it with either ``feed(data)`` or, to avoid a copy, by reading into ``buffer()`` and calling
    ``advance(n)`` with the count read (0 meaning end of stream).  Then call ``next_frame()`` until it
    returns NEED_DATA.  A frame's memoryview stays valid until the next call of ``buffer``, ``feed``
    or ``next_frame``.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 scratch_size: int = SCRATCH_SIZE) -> None:
        if scratch_size < HEADER_SIZE:
            raise ValueError("the scratch buffer must hold at least one header")
        self.max_message_size = max_message_size
        self._scratch = bytearray(scratch_size)
        self._view = memoryview(self._scratch)
        self._start = 0  # unconsumed bytes are scratch[_start:_end]
        self._end = 0
        self._body: memoryview | None = None  # a large payload being read in place (its buffer so far)
        self._body_len = 0  # the payload's announced length: _body grows towards it as bytes arrive
        self._spare: bytearray | None = None  # reused for the next large payload
        self._body_sid = 0
        self._filled = 0
        self._skip = 0  # bytes of an oversized payload still to discard
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._end - self._start + self._filled

    @property
    def in_body(self) -> bool:
        """True while buffer() is the exact remainder of a large payload (read it to the end)."""
        return self._body is not None

    @property
    def in_frame(self) -> bool:
        """True while part of a frame (or an oversized payload being skipped) has been received."""
        return self._end > self._start or self._body is not None or self._skip > 0

    def buffer(self) -> memoryview:
        """The writable area the next read should fill (never empty)."""
        if self._body is None and not self._skip:
            self._progress()
        if self._body_open():
            body = self._body
            assert body is not None
            if self._filled == len(body):
                body = self._grow_body()
            return body[self._filled:]
        if self._skip and self._start == self._end:
            self._start = self._end = 0
            return self._view[:min(self._skip, len(self._scratch))]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._scratch) or self._start > len(self._scratch) // 2:
            n = self._end - self._start
            self._scratch[:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        return self._view[self._end:]

    def advance(self, n: int) -> None:
        """Record that ``n`` bytes were written into ``buffer()``; 0 means the stream ended."""
        if n == 0:
            self._eof = True
        elif self._body_open():
            self._filled += n
        else:
            self._end += n

    def _body_open(self) -> bool:
        """A large payload is being read in place and still misses bytes.  (Once it is complete,
        feed() may still hand over what follows it: that goes to the scratch buffer.)"""
        return self._body is not None and self._filled < self._body_len

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in; ``b""`` means the stream ended."""
        mv = memoryview(data).cast("B")
        if not mv:
            self.advance(0)
        while mv:
            dst = self.buffer()
            if not dst:
                self._grow()
                continue
            n = min(len(dst), len(mv))
            dst[:n] = mv[:n]
            self.advance(n)
            mv = mv[n:]
            if mv:
                self._progress()

    def _grow(self) -> None:
        """Double the scratch buffer (only feed() needs this: it may be handed many frames at once)."""
        bigger = bytearray(2 * len(self._scratch))
        bigger[:self._end] = self._view[:self._end]
        self._scratch, self._view = bigger, memoryview(bigger)

    def _progress(self) -> None:
        """Move a completed header into body mode or skip mode, without returning frames."""
        if self._body is None and not self._skip and self._end - self._start >= HEADER_SIZE:
            sid, length = parse_header(self._view[self._start:self._start + HEADER_SIZE],
                                       self.max_message_size)
            if length <= self.max_message_size and HEADER_SIZE + length > len(self._scratch):
                self._start_body(sid, length)

    def _start_body(self, sid: int, length: int) -> None:
        self._start += HEADER_SIZE
        have = min(self._end - self._start, length)
        # Reuse one body buffer for payloads up to BODY_REUSE_MAX: a fresh 1 MiB allocation costs
        # page faults and zeroing on every message (measured: more than the kernel copy itself).
        spare = self._spare
        if spare is not None and len(spare) >= length:
            body = memoryview(spare)[:length]
        else:  # only what has arrived, rounded up: the rest is allocated as it comes (_grow_body)
            body = self._new_body(min(length, max(BODY_START, have)))
        body[:have] = self._view[self._start:self._start + have]
        self._start += have
        self._body, self._body_sid, self._filled, self._body_len = body, sid, have, length

    def _new_body(self, size: int) -> memoryview:
        buf = bytearray(size)
        if size <= BODY_REUSE_MAX:
            self._spare = buf
        return memoryview(buf)

    def _grow_body(self) -> memoryview:
        """Double the full body buffer (up to the announced length), keeping what it holds."""
        old = self._body
        assert old is not None
        body = self._new_body(min(self._body_len, 2 * len(old)))
        body[:self._filled] = old[:self._filled]
        self._body = body
        return body

    def frame_ready(self) -> bool:
        """True when next_frame() would not return NEED_DATA (a frame, END, or an error is due)."""
        if self._body is not None:
            return self._filled >= self._body_len or self._eof
        avail = self._end - self._start
        if self._skip > avail:
            return self._eof
        start = self._start + self._skip
        avail -= self._skip
        if avail < HEADER_SIZE:
            return self._eof or (avail > 0 and self._view[start] != MAGIC)
        try:
            _, length = parse_header(self._view[start:start + HEADER_SIZE], self.max_message_size)
        except ProtocolError:
            return True
        return length > self.max_message_size or avail >= HEADER_SIZE + length or self._eof

    def next_frame(self) -> NextFrame:
        """Return ``(sid, payload)``, NEED_DATA, or END (clean end of stream).

        Raises:
            MessageTooLarge: the frame's length exceeds max_message_size; its payload will be
                skipped as it arrives, and the reader stays usable.
            ProtocolError: a bad header; the stream cannot be resynchronised.
            PeerVanished: the stream ended in the middle of a frame.
        """
        while True:
            if self._skip:
                n = min(self._skip, self._end - self._start)
                self._start += n
                self._skip -= n
                if self._skip:
                    return self._need_data()
            if self._body is not None:
                if self._filled < self._body_len:
                    return self._need_data()
                body, self._body, self._filled = self._body[:self._body_len], None, 0
                return self._body_sid, body
            avail = self._end - self._start
            if avail < HEADER_SIZE:
                if avail and self._view[self._start] != MAGIC:  # no need to wait for the rest
                    raise _bad_magic(self._view[self._start])
                return self._need_data()
            start = self._start
            sid, length = parse_header(self._view[start:start + HEADER_SIZE], self.max_message_size)
            if length > self.max_message_size:
                self._start += HEADER_SIZE
                self._skip = length
                raise MessageTooLarge(
                    f"the peer sent a {length}-byte message; this channel's max_message_size is "
                    f"{self.max_message_size} (the message is discarded; raise max_message_size= "
                    "on both sides to allow it)", length, self.max_message_size)
            if avail >= HEADER_SIZE + length:
                self._start = start + HEADER_SIZE + length
                return sid, self._view[start + HEADER_SIZE:self._start]
            if HEADER_SIZE + length > len(self._scratch):
                self._start_body(sid, length)
                continue
            return self._need_data()

    def take_frames(self, out: list[_T], limit: int, decode: Callable[[int, memoryview], _T]) -> None:
        """Append ``decode(sid, payload)`` to ``out``, until it holds ``limit`` items, for the whole
        frames already in the scratch buffer, parsed in one loop (a batch: Channel.recv_many).  Stops
        at anything else: a partial frame, a large payload, a frame to skip, or a bad header
        (next_frame() then reports it with its full semantics).  A frame whose ``decode`` raises is
        consumed (as a single receive consumes it) and the exception propagates; what ``out`` holds
        stays, and the frames after it stay in the reader.  ``payload`` is valid only during the call.
        """
        if self._body is not None or self._skip:
            return
        view, start, end, most = self._view, self._start, self._end, self.max_message_size
        append = out.append
        room = limit - len(out)
        try:
            while room > 0 and end - start >= HEADER_SIZE:
                magic, sid, flags, length = _unpack_from(view, start)
                stop = start + HEADER_SIZE + length
                if magic != MAGIC or flags or length > most or stop > end:
                    break
                payload, start = view[start + HEADER_SIZE:stop], stop
                append(decode(sid, payload))
                room -= 1
        finally:
            self._start = start

    def _need_data(self) -> NextFrame:
        if not self._eof:
            return NEED_DATA
        if self.in_frame:
            raise PeerVanished(f"the stream ended in the middle of a frame ({self.buffered} bytes "
                               "of it had arrived)")
        return END


def frame_parts(sid: int, payload: memoryview) -> list[bytes | memoryview]:
    """The buffers to write for one frame: one concatenated buffer when small, else header + payload.

    Small frames are joined because one write of a joined buffer is cheaper than a gathered write;
    large payloads are not copied (as CPython's multiprocessing does above 16 KiB).
    """
    n = payload.nbytes
    if n <= JOIN_MAX:
        return [header(sid, n) + payload]
    return [header(sid, n), payload]


def batch_parts(sid: int, payloads: Sequence[Any]) -> list[bytes | memoryview]:
    """The buffers to write for many frames (a batch): consecutive small frames joined into one
    buffer, a large payload written from where it lies after its own header.  ``payloads`` are
    bytes-like (C-contiguous)."""
    parts: list[bytes | memoryview] = []
    small: list[Any] = []
    joined = 0  # bytes in small: a joined buffer stays under _JOIN_LIMIT
    for payload in payloads:
        n = len(payload) if payload.__class__ is bytes else memoryview(payload).nbytes
        if n <= JOIN_MAX and joined < _JOIN_LIMIT:
            small += (_pack(MAGIC, sid, 0, n), payload)
            joined += n + HEADER_SIZE
            continue
        if small:
            parts.append(b"".join(small))
            small, joined = [], 0
        if n <= JOIN_MAX:
            small += (_pack(MAGIC, sid, 0, n), payload)
            joined += n + HEADER_SIZE
        else:
            parts += (header(sid, n), memoryview(payload).cast("B"))
    if small:
        parts.append(b"".join(small))
    return parts
