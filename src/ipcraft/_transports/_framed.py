"""Framing as an adapter: a byte stream seen as a message port, with ipcraft's frames (``_framing``).

The channel sends and receives through message ports only; for unix://, tcp:// and ipcraft.pipe() it
wraps the stream in a :class:`FramedStream`.  The frame format and the sans-I/O reader are in
``_framing.py``; this module adds the I/O: writing a frame's parts, and filling the reader from the
stream until a frame is whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .._framing import END, MAX_LENGTH, FrameReader, batch_parts, frame_parts
from ..errors import ChannelClosed, MessageTooLarge, PeerVanished, ProtocolError, Timeout
from ._contract import NO_META, ByteStream, Message

_new_tuple = tuple.__new__


class FramedStream:
    """A :class:`~._contract.MessagePort` over a :class:`~._contract.ByteStream`.

    ``what`` names the channel in errors.  A bad frame header closes the stream (it cannot be
    resynchronised) and raises ProtocolError with ``closed=True``; a frame over ``max_message_size``
    raises MessageTooLarge and is skipped as it arrives, the stream staying usable.
    """

    __slots__ = ("_what", "reader", "stream")

    def __init__(self, stream: ByteStream, max_message_size: int, what: str) -> None:
        self.stream = stream
        self.reader = FrameReader(max_message_size)
        self._what = what

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        if extra:
            raise TypeError(f"{self._what} takes no mechanism options; got {', '.join(sorted(extra))}")
        self.stream.send_all(frame_parts(sid, payload), deadline)

    def send_messages(self, sid: int, payloads: Sequence[Any], deadline: float | None) -> None:
        """Send many messages (Channel.send_many) in one send_all(): consecutive small frames joined
        into one buffer, so a batch of small messages is one system call."""
        self.stream.send_all(batch_parts(sid, payloads), deadline)

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        if extra:
            raise TypeError(f"{self._what} takes no mechanism options; got {', '.join(sorted(extra))}")
        reader, stream = self.reader, self.stream
        try:
            while True:
                frame = reader.next_frame()
                if frame.__class__ is tuple:  # (sid, payload): the common case, built without Python calls
                    return _new_tuple(Message, (*frame, NO_META))
                if frame is END:
                    raise ChannelClosed(f"the peer closed {self._what}")
                reader.advance(stream.recv_into(reader.buffer(), deadline, reader.in_body))
        except ProtocolError as exc:
            stream.close()
            exc.closed = True
            raise

    def take_buffered(self, out: list[Any], limit: int, decode: Callable[[int, memoryview], Any]) -> None:
        """Append ``decode(sid, payload)`` to ``out`` (up to ``limit`` items) for the messages whose
        frames are already read, without a system call (Channel.recv_many takes a batch this way):
        small frames parsed in one loop (FrameReader.take_frames), others one at a time.  Raises as
        recv_message."""
        reader = self.reader
        reader.take_frames(out, limit, decode)
        while len(out) < limit and reader.frame_ready():
            try:
                frame = reader.next_frame()
            except ProtocolError as exc:
                self.stream.close()
                exc.closed = True
                raise
            if frame.__class__ is not tuple:
                return  # the end of the stream: the next receive reports it
            sid, payload = frame
            out.append(decode(sid, payload))
            reader.take_frames(out, limit, decode)

    def wait_readable(self, deadline: float | None) -> bool:
        """Whether a whole frame (or the end of the stream, or an error) is ready."""
        reader, stream = self.reader, self.stream
        while not reader.frame_ready():
            if not stream.wait_readable(deadline):
                return False
            try:
                n = stream.recv_into(reader.buffer(), time.monotonic())
            except Timeout:
                continue
            reader.advance(n)
            if n == 0:
                return True
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        self.stream.close()


class RawStream:
    """A :class:`~._contract.MessagePort` over a byte stream without ipcraft's frames, for peers that
    do not speak them (socat, shell tools, C programs): ``framing=lines`` (each message is a line,
    sent with a newline after it; a message may not contain one) or ``framing=length`` (a 4-byte
    big-endian length, then the message: the most common convention).  Only raw bytes travel (sid 0).

    A line or length over ``max_message_size`` raises MessageTooLarge and closes the stream (there
    is no frame boundary to skip to that a peer agreed on).  At end of stream a final line without
    its newline is still a message; a length-prefixed message cut short is PeerVanished.
    """

    _CHUNK = 65536

    def __init__(self, stream: ByteStream, framing: str, max_message_size: int, what: str) -> None:
        if framing not in ("lines", "length"):
            raise ValueError(f"a raw byte stream is framed by lines or length, not {framing!r}")
        self.stream = stream
        self._lines = framing == "lines"
        self._max = max_message_size
        self._what = what
        self._buf = bytearray()
        self._chunk = memoryview(bytearray(self._CHUNK))  # each read lands here first
        self._start = 0  # unconsumed bytes are _buf[_start:]
        self._eof = False

    def parts(self, payload: memoryview) -> list[bytes | memoryview]:
        """The buffers to write for one message (ipcraft.aio writes them itself).

        Raises:
            ValueError: a newline inside a message framed by lines; nothing is written.
            MessageTooLarge: a message longer than the 4-byte length prefix can say.
        """
        n = payload.nbytes
        if self._lines:
            if payload.tobytes().find(b"\n") >= 0:
                raise ValueError(f"{self._what} is framed by lines: a message may not contain a newline "
                                 "(nothing was sent; use framing=length for arbitrary bytes)")
            return [payload, b"\n"]
        if n > MAX_LENGTH:
            raise MessageTooLarge(f"a {n}-byte message exceeds the 4-byte length prefix of {self._what}",
                                  n, MAX_LENGTH)
        return [n.to_bytes(4, "big"), payload]

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        if extra:
            raise TypeError(f"{self._what} takes no mechanism options; got {', '.join(sorted(extra))}")
        self.stream.send_all(self.parts(payload), deadline)

    def _next(self) -> bytes | None:
        """The next whole message in the buffer, or None.  MessageTooLarge: see the class docs."""
        buf, start = self._buf, self._start
        if self._lines:
            end = buf.find(b"\n", start)
            if end < 0:
                if len(buf) - start > self._max:
                    self._too_large(len(buf) - start, "a line longer than")
                if self._eof and len(buf) > start:
                    end = len(buf)  # the last line, without its newline
                else:
                    return None
            msg = bytes(buf[start:end])
            self._consume(end + 1)
            return msg
        if len(buf) - start < 4:
            return None
        n = int.from_bytes(buf[start:start + 4], "big")
        if n > self._max:
            self._too_large(n, "a length prefix of")
        if len(buf) - start < 4 + n:
            return None
        msg = bytes(buf[start + 4:start + 4 + n])
        self._consume(start + 4 + n)
        return msg

    def _consume(self, upto: int) -> None:
        self._start = min(upto, len(self._buf))
        if self._start > len(self._buf) // 2:
            del self._buf[:self._start]
            self._start = 0

    def _too_large(self, n: int, what: str) -> None:
        self.stream.close()
        raise MessageTooLarge(f"{self._what}: {what} {n} bytes exceeds max_message_size {self._max}; the "
                              "stream was closed (raw framing has no boundary to skip to)", n, self._max)

    def _fill(self, deadline: float | None) -> None:
        chunk = self._chunk
        n = self.stream.recv_into(chunk, deadline)
        if n == 0:
            self._eof = True
        else:
            self._buf += chunk[:n]

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        if extra:
            raise TypeError(f"{self._what} takes no mechanism options; got {', '.join(sorted(extra))}")
        while True:
            msg = self._next()
            if msg is not None:
                return Message(0, memoryview(msg), NO_META)
            if self._eof:
                if len(self._buf) > self._start:
                    raise PeerVanished(f"the stream of {self._what} ended in the middle of a message")
                raise ChannelClosed(f"the peer closed {self._what}")
            self._fill(deadline)

    def wait_readable(self, deadline: float | None) -> bool:
        """Whether a whole message (or the end of the stream) is ready."""
        while not self._eof and self._complete() is False:
            if not self.stream.wait_readable(deadline):
                return False
            try:
                self._fill(time.monotonic())
            except Timeout:
                continue
        return True

    def _complete(self) -> bool:
        buf, start = self._buf, self._start
        if self._lines:
            return buf.find(b"\n", start) >= 0 or len(buf) - start > self._max
        if len(buf) - start < 4:
            return False
        n = int.from_bytes(buf[start:start + 4], "big")
        return n > self._max or len(buf) - start >= 4 + n

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        self.stream.close()
