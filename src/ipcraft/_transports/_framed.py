"""Framing as an adapter: a byte stream seen as a message port, with ipcraft's frames (``_framing``).

The channel sends and receives through message ports only; for unix://, tcp:// and ipcraft.pipe() it
wraps the stream in a :class:`FramedStream`.  The frame format and the sans-I/O reader are in
``_framing.py``; this module adds the I/O: writing a frame's parts, and filling the reader from the
stream until a frame is whole.
"""

from __future__ import annotations

import time
from typing import Any

from .._framing import END, FrameReader, frame_parts
from ..errors import ChannelClosed, ProtocolError, Timeout
from ._contract import NO_META, ByteStream, Message


class FramedStream:
    """A :class:`~._contract.MessagePort` over a :class:`~._contract.ByteStream`.

    ``what`` names the channel in errors.  A bad frame header closes the stream (it cannot be
    resynchronised) and raises ProtocolError with ``closed=True``; a frame over ``max_message_size``
    raises MessageTooLarge and is skipped as it arrives, the stream staying usable.
    """

    def __init__(self, stream: ByteStream, max_message_size: int, what: str) -> None:
        self.stream = stream
        self.reader = FrameReader(max_message_size)
        self._what = what

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        if extra:
            raise TypeError(f"{self._what} takes no mechanism options; got {', '.join(sorted(extra))}")
        self.stream.send_all(frame_parts(sid, payload), deadline)

    def send_messages(self, sid: int, payloads: list[memoryview], deadline: float | None) -> None:
        """Send many messages in as few writes as the stream takes (Channel.send_many): their frames
        go to send_all() together, small ones joined as for one message."""
        parts: list[bytes | memoryview] = []
        for payload in payloads:
            parts += frame_parts(sid, payload)
        self.stream.send_all(parts, deadline)

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        if extra:
            raise TypeError(f"{self._what} takes no mechanism options; got {', '.join(sorted(extra))}")
        reader, stream = self.reader, self.stream
        try:
            while True:
                frame = reader.next_frame()
                if isinstance(frame, tuple):
                    return Message(frame[0], frame[1], NO_META)
                if frame is END:
                    raise ChannelClosed(f"the peer closed {self._what}")
                reader.advance(stream.recv_into(reader.buffer(), deadline, reader.in_body))
        except ProtocolError as exc:
            stream.close()
            exc.closed = True
            raise

    def next_buffered(self) -> Message | None:
        """The next message if its whole frame is already read, else None; no system call
        (Channel.recv_many takes a batch this way).  Raises as recv_message."""
        try:
            frame = self.reader.next_frame()
        except ProtocolError as exc:
            self.stream.close()
            exc.closed = True
            raise
        return Message(frame[0], frame[1], NO_META) if isinstance(frame, tuple) else None

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
