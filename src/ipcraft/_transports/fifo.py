"""fifo:///path — a named pipe as a queue with many writers and one reader, messages never interleaved.

Roles: ``create=True`` makes the FIFO (mkfifo, mode 0600 unless ``mode=``) and a sidecar file
``<path>.lock``, and is the queue's one reader and owner: close() removes both names.  Handles that
open the queue are writers.  A writer opens the FIFO with O_NONBLOCK, so with no reader it fails at
once with ENXIO instead of blocking in open(2).  The reader keeps a write end of its own open, so
writers may come and go without the reader ever seeing end-of-file: a queue has no end of stream.

Decisions:

* **One reader.**  Only the creating handle reads; opening never does, so a fifo:// queue has
  exactly one reader by construction.  (Reading one owner handle from two forked processes is not
  supported: they would split frames.)
* **No interleaving, whatever the size.**  Linux writes at most PIPE_BUF (4096) bytes atomically; a
  larger write is split whenever the pipe fills, and any other writer's write -- even a small atomic
  one -- can land between the pieces.  So every frame is written while holding an exclusive flock(2)
  on the sidecar file, and a frame of at most PIPE_BUF bytes is still written by one write(2), so it
  is all-or-nothing.  flock was chosen over fcntl record locks because it also excludes two handles
  in one process (POSIX record locks are per process), over OFD locks because it needs no struct
  packing, and over a lock on the FIFO itself because the sidecar also carries the state below.
  Measured cost: two system calls per message.
* **A writer that stops mid-frame** (killed, or timed out) leaves part of a frame in the pipe, which
  must neither wedge the reader nor be spliced onto the next writer's frame.  The sidecar holds two
  bytes, mmapped by every handle: STATE (CLEAN, WRITING, BROKEN) and READER (1 while the reader holds
  or may be reading part of a frame).  A writer sets WRITING before the first byte of a large frame
  and CLEAN after the last, all under the lock, so the next lock holder that finds WRITING knows its
  predecessor stopped mid-frame.  It then writes nothing until the reader has drained the pipe: if
  the reader holds a partial frame the writer marks BROKEN and waits for the reader to discard it.
  The reader, while starved in the middle of a frame, looks every 20 ms: BROKEN, or WRITING with the
  lock free (the writer is gone and nobody else waits), means the frame will never complete; it
  discards the partial frame and raises PeerVanished, and the queue stays usable.  So a vanished
  writer costs exactly its own message.
* **Capacity.**  The pipe is raised to 1 MiB where /proc/sys/fs/pipe-max-size allows (the 64 KiB
  default caps 1 MiB messages at ~0.9 GB/s; 1 MiB gives ~3.4 GB/s); ``pipe_size=`` asks for a size
  and fails with LimitExceeded if the kernel refuses it.
"""

from __future__ import annotations

import errno
import fcntl
import io
import mmap
import os
import select
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._endpoint import Endpoint
from .._errors import os_error, translating
from .._framing import DEFAULT_MAX_MESSAGE_SIZE, HEADER, HEADER_SIZE, MAGIC, SCRATCH_SIZE, FrameReader, header
from .._names import DEFAULT_MODE
from .._peer import Peer
from .._wait import wait_fd
from ..errors import HandleClosed, LimitExceeded, PeerVanished, ProtocolError, Timeout
from ..primitives.fifo import Fifo
from . import framed
from ._contract import Message, Transport
from ._io import FdStream, timed_out
from .pipe import PIPE_SIZE, set_pipe_size

PIPE_BUF: int = select.PIPE_BUF
_pack = HEADER.pack
_POLLIN = select.POLLIN
# Sidecar bytes, and the values of STATE.
_STATE, _READER = 0, 1
_CLEAN, _WRITING, _BROKEN = 0, 1, 2
_SIDECAR_SIZE = 8
_CHECK_EVERY = 0.02  # how often a reader starved mid-frame looks for a vanished writer
_FIONREAD = 0x541B  # termios.FIONREAD on Linux


def open_queue(endpoint: Endpoint, create: bool | str) -> Transport:
    """Create the FIFO and read it (``create`` true, or "if_missing" and absent), else open it to write.
    With a raw framing (lines, length): any FIFO, opened to read and write, without the sidecar."""
    if endpoint.framing != "ipcraft":
        return RawFifo(endpoint, create)
    if create is False:
        return FifoWriter(endpoint)
    try:
        return FifoReader(endpoint)
    except FileExistsError:
        if create == "if_missing":
            return FifoWriter(endpoint)
        raise


def _sidecar(path: str) -> str:
    return path + ".lock"


def _in_pipe(fd: int) -> int:
    """Bytes waiting in the pipe (FIONREAD works on either end)."""
    n: int = struct.unpack("i", fcntl.ioctl(fd, _FIONREAD, b"\0\0\0\0"))[0]
    return n


def _closed(stream: FdStream) -> bool:
    try:
        stream.fileno()
    except HandleClosed:
        return True
    return False


def _sidecar_mode(mode: int) -> int:
    """Whoever may read or write the FIFO needs read and write access to the lock file."""
    out = 0
    for shift in (6, 3, 0):
        if (mode >> shift) & 0o6:
            out |= 0o6 << shift
    return out


class _FifoBase(Transport):
    """What readers and writers share: the Fifo handle with one end open (primitives.fifo: exclusive
    create, exact mode, ENXIO explained, unlink only of the FIFO it made), a stream over a dup of that
    end, and the mmapped lock file."""

    _lockfd = -1
    _map: mmap.mmap | None = None
    _stream: FdStream | None = None
    _fifo: Fifo | None = None

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.path = endpoint.address
        self.last_meta: dict[str, Any] = {}
        self.peer = Peer()

    def _attach_sidecar(self, fd: int) -> None:
        self._lockfd = fd
        self._map = mmap.mmap(fd, _SIDECAR_SIZE)

    def _attach_end(self, fifo: Fifo, readable: bool) -> None:
        # The stream gets its own fd: FdStream closes it (even mid-send, on a cut frame) independently
        # of the Fifo handle, which closes the original and removes the name.
        self._stream = FdStream(os.dup(fifo.fileno()), str(self.endpoint), readable=readable,
                                writable=not readable)

    def fileno(self) -> int:
        if self._stream is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        return self._stream.fileno()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        fifo, self._fifo = self._fifo, None
        if fifo is not None:
            fifo.close()  # the owner's removes the FIFO, if the path still names the one it made
        m, self._map = self._map, None
        if m is not None:
            m.close()
        fd, self._lockfd = self._lockfd, -1
        if fd >= 0:
            os.close(fd)

    def extra(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"pipe_buf": PIPE_BUF, "role": "reader" if self.owner else "writer"}
        if self._stream is not None:
            facts["pipe_size"] = fcntl.fcntl(self.fileno(), fcntl.F_GETPIPE_SZ)
        return facts

    def _unsupported(self, verb: str) -> io.UnsupportedOperation:
        mine = "reads (it created the queue)" if self.owner else "writes (it opened the queue)"
        return io.UnsupportedOperation(f"cannot {verb} on this handle of {self.endpoint}: it only {mine}")

    def _lock(self, deadline: float | None) -> None:
        """Take the writers' exclusive flock, waiting at most until ``deadline``."""
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:  # type: ignore[operator]
                    raise Timeout(f"sending on {self.endpoint}: another writer held the queue's lock until "
                                  "the deadline; nothing was sent (still usable)") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.005)

    def _unlock(self) -> None:
        fcntl.flock(self._lockfd, fcntl.LOCK_UN)


class FifoWriter(_FifoBase):
    """A writing handle: frames go in whole, under the writers' lock."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self._fifo = Fifo.open(self.path)  # FileNotFoundError; InvalidEndpoint if not a FIFO
        try:
            # O_NONBLOCK: with no reader this fails at once with ENXIO (explained) instead of waiting.
            self._fifo.open_write(nonblocking=True)
            try:
                lockfd = os.open(_sidecar(self.path), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO,
                               f"opening {endpoint} to write: its lock file {_sidecar(self.path)} is "
                               "missing or unusable (was the FIFO created by ipcraft.queue(create=True)?)",
                               _sidecar(self.path)) from exc
            try:
                self._attach_sidecar(lockfd)
            except BaseException:
                os.close(lockfd)
                raise
            self._attach_end(self._fifo, readable=False)
        except BaseException:
            self.close()
            raise
        # A writer only sends; pickle may go to a reader this uid (or root) created the FIFO for.
        self.authenticated = os.stat(self.path).st_uid in (os.geteuid(), 0)

    def wait_readable(self, deadline: float | None) -> bool:
        raise self._unsupported("receive")

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        raise self._unsupported("receive")

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        """Write one frame without interleaving (see the module docstring)."""
        if extra:
            raise TypeError(f"fifo:// takes no per-message options; got {', '.join(extra)}")
        stream, m = self._stream, self._map
        if stream is None or m is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        parts = [p for p in framed(sid, payload) if memoryview(p).nbytes]  # send_all spins on an empty tail
        self._lock(deadline)
        try:
            if m[_STATE] != _CLEAN:
                self._recover(m, deadline)
            self._write(stream, m, parts, sum(memoryview(p).nbytes for p in parts), deadline)
        finally:
            self._unlock()
            if _closed(stream):  # send_timeout() cut the stream
                self.close()

    def send_messages(self, sid: int, payloads: Sequence[Any], deadline: float | None) -> None:
        """Write many frames (Channel.send_many) under ONE acquisition of the writers' lock: the
        small ones joined into writes of at most PIPE_BUF bytes that end on a frame boundary (each
        all or nothing), a larger one on its own as send_message writes it.  A Timeout leaves the
        frames written before it in the queue, whole."""
        stream, m = self._stream, self._map
        if stream is None or m is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        chunk: list[Any] = []
        size = 0  # bytes in chunk
        self._lock(deadline)
        try:
            if m[_STATE] != _CLEAN:
                self._recover(m, deadline)
            for payload in payloads:
                n = len(payload) if payload.__class__ is bytes else memoryview(payload).nbytes
                frame = HEADER_SIZE + n
                if size + frame > PIPE_BUF and chunk:
                    self._write(stream, m, [b"".join(chunk)], size, deadline)
                    chunk, size = [], 0
                if frame <= PIPE_BUF:
                    chunk += (_pack(MAGIC, sid, 0, n), payload)
                    size += frame
                else:
                    self._write(stream, m, [header(sid, n), memoryview(payload).cast("B")], frame, deadline)
            if chunk:
                self._write(stream, m, [b"".join(chunk)], size, deadline)
        finally:
            self._unlock()
            if _closed(stream):  # send_timeout() cut the stream
                self.close()

    @staticmethod
    def _write(stream: FdStream, m: mmap.mmap, parts: list[Any], total: int, deadline: float | None) -> None:
        """Write whole frames (``total`` bytes), the writers' lock held."""
        if total <= PIPE_BUF:
            stream.send_all(parts, deadline)  # one write(2) of <= PIPE_BUF bytes: all or nothing
        else:
            m[_STATE] = _WRITING
            stream.send_all(parts, deadline)  # a Timeout mid-frame leaves WRITING for the next holder
            m[_STATE] = _CLEAN

    def _recover(self, m: mmap.mmap, deadline: float | None) -> None:
        """The previous lock holder stopped mid-frame: wait until the reader has drained its remains."""
        delay = 0.001
        while m[_STATE] != _CLEAN:
            if _in_pipe(self.fileno()) == 0:
                if m[_READER] == 0:  # the reader is between frames and nothing is left: no harm done
                    m[_STATE] = _CLEAN
                    return
                m[_STATE] = _BROKEN  # the reader holds a partial frame: it must discard it first
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"sending on {self.endpoint}: a previous writer stopped in the middle of a "
                              "message and the reader has not yet drained what it left; nothing was sent "
                              "(still usable)")
            time.sleep(delay)
            delay = min(2 * delay, 0.01)


class FifoReader(_FifoBase):
    """The creating handle: makes the FIFO and its lock file, reads whole frames, unlinks on close."""

    owner = True
    _dummy: Fifo | None = None
    _lock_ino: int | None = None  # the lock file this handle made
    _creator_pid = -1

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        path, mode = self.path, endpoint.options.get("mode", DEFAULT_MODE)
        self._max = endpoint.options.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        self._fifo = Fifo.create(path, mode=mode)  # exclusive: FileExistsError
        self._creator_pid = os.getpid()
        try:
            with translating(f"creating the lock file of {endpoint}", _sidecar(path)):
                lockfd = os.open(_sidecar(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                                 | os.O_NOFOLLOW, _sidecar_mode(mode))
                self._lock_ino = os.fstat(lockfd).st_ino
                try:
                    os.fchmod(lockfd, _sidecar_mode(mode))
                    os.ftruncate(lockfd, _SIDECAR_SIZE)
                    self._attach_sidecar(lockfd)
                except BaseException:
                    os.close(lockfd)
                    raise
            self._fifo.open_read(nonblocking=True)
            self._dummy = Fifo.open(path)
            self._dummy.open_write(nonblocking=True)  # a write end of our own: no EOF, no POLLHUP
            size = endpoint.options.get("pipe_size")
            if size is None:
                set_pipe_size(self._fifo.fileno(), PIPE_SIZE)
            else:
                self._fifo.set_capacity(size)  # LimitExceeded names the knob
            self._attach_end(self._fifo, readable=True)
        except BaseException:
            self.close()
            raise
        # Only this uid (and root) can write unless mode= lets group or others in.
        self.authenticated = not mode & 0o022
        self._reader = FrameReader(self._max)  # the channels' frame reader: one frame format, one parser
        self._junk = bytearray(SCRATCH_SIZE)  # where _drain() throws away what is not a frame

    def close(self) -> None:
        dummy, self._dummy = self._dummy, None
        if dummy is not None:
            dummy.close()
        super().close()
        self._unlink_lock_file()

    def unlink(self) -> None:
        """Remove the FIFO and its lock file now; open handles keep working, new opens fail."""
        if self._fifo is not None and self._fifo.owner:
            self._fifo.unlink()
        self._unlink_lock_file()

    def _unlink_lock_file(self) -> None:
        # Only the lock file this handle made, and never from a forked child (as Fifo does).
        ino, self._lock_ino = self._lock_ino, None
        if ino is None or os.getpid() != self._creator_pid:
            return
        try:
            if os.stat(_sidecar(self.path)).st_ino == ino:
                os.unlink(_sidecar(self.path))
        except OSError:
            pass

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        raise self._unsupported("send")

    def _live(self) -> tuple[FdStream, mmap.mmap]:
        if self._stream is None or self._map is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        return self._stream, self._map

    # -- receiving ---------------------------------------------------------------------------------

    def _partial(self) -> bool:
        """Part of a frame (or of an oversized frame being skipped) is held here."""
        return self._reader.in_frame

    def wait_readable(self, deadline: float | None) -> bool:
        stream, _ = self._live()
        return self._reader.frame_ready() or wait_fd(stream.fileno(), _POLLIN, deadline)

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        """One whole message, read with the same FrameReader as the byte-stream channels.

        A frame over max_message_size raises MessageTooLarge and is skipped as it arrives; bytes that
        are not a frame raise ProtocolError after the queue was resynchronised (see _resync).
        """
        if extra:
            raise TypeError(f"fifo:// takes no per-message options; got {', '.join(extra)}")
        self._live()
        while True:
            reader = self._reader
            try:
                frame = reader.next_frame()
            except ProtocolError:
                self._resync()
                raise
            if isinstance(frame, tuple):
                return Message(frame[0], frame[1])
            # NEED_DATA (END cannot come: this handle holds a write end of its own).
            reader.advance(self._fill(reader.buffer(), deadline))

    def take_buffered(self, out: list[Any], limit: int, decode: Callable[[int, memoryview], Any]) -> None:
        """Append ``decode(sid, payload)`` to ``out`` (up to ``limit`` items) for the messages whose
        frames are already read, without a system call (Channel.recv_many); raises as recv_message."""
        self._live()
        reader = self._reader
        reader.take_frames(out, limit, decode)
        while len(out) < limit and reader.frame_ready():
            try:
                frame = reader.next_frame()
            except ProtocolError:
                self._resync()
                raise
            if not isinstance(frame, tuple):
                return
            out.append(decode(frame[0], frame[1]))
            reader.take_frames(out, limit, decode)

    def _fill(self, target: memoryview, deadline: float | None) -> int:
        """Read at least one byte into ``target``, watching for writers that vanish mid-frame."""
        stream, m = self._live()
        fd = stream.fileno()
        while True:
            partial = self._partial()
            if partial:
                m[_READER] = 1
                step = time.monotonic() + _CHECK_EVERY
                ready = wait_fd(fd, _POLLIN, step if deadline is None else min(deadline, step))
            else:
                m[_READER] = 0  # between frames: a recovering writer may go ahead
                if m[_STATE] == _BROKEN:
                    m[_STATE] = _CLEAN  # nothing partial here to discard
                ready = wait_fd(fd, _POLLIN, deadline)
            if ready:
                m[_READER] = 1  # before the read: see the module docstring
                try:
                    n = stream.recv_into(target, time.monotonic())
                except Timeout:
                    continue  # woken without data
                if n:  # 0 (end of file) cannot happen while this handle holds a write end itself
                    return n
            if deadline is not None and time.monotonic() >= deadline:
                raise timed_out(f"receiving on {self.endpoint}")
            if partial:
                self._check_vanished(m)

    def _check_vanished(self, m: mmap.mmap) -> None:
        """Starved mid-frame: discard the frame if its writer is gone (PeerVanished), else return."""
        if m[_STATE] == _CLEAN:
            return  # its writer is alive and still writing
        if m[_STATE] == _WRITING:
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # the writer, or a successor that will mark BROKEN, holds the lock
            try:
                if _in_pipe(self.fileno()):
                    return  # more bytes came after all
                self._discard(m)
            finally:
                self._unlock()
        else:
            self._discard(m)
        raise PeerVanished(f"a writer of {self.endpoint} stopped in the middle of a message (it died or "
                           "timed out); the part received was discarded and the queue is still usable")

    def _discard(self, m: mmap.mmap) -> None:
        self._reader = FrameReader(self._max)  # it held only the partial frame: nothing else is lost
        m[_STATE] = _CLEAN
        m[_READER] = 0

    def _resync(self) -> None:
        """After bytes that are not a frame (a foreign writer): drop what is buffered and in the pipe
        until the writers' lock is free, so the next frame starts clean.  Draining goes on while
        waiting, since a writer holding the lock may be waiting for room in the pipe."""
        stream, m = self._live()
        while True:
            self._drain(stream)
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.001)
        try:
            self._drain(stream)
            self._discard(m)
        finally:
            self._unlock()

    def _drain(self, stream: FdStream) -> None:
        while True:
            try:
                stream.recv_into(memoryview(self._junk), time.monotonic())
            except Timeout:
                return


class RawFifo(FdStream):
    """fifo:// with ``framing=lines`` or ``framing=length``: any FIFO, one made with mkfifo(1) by
    another program included, with no sidecar lock file.

    The handle opens the FIFO read-write (Linux never blocks such an open), so it may send and
    receive, and it never sees end of file.  Without the lock, a message is whole only when its
    framed form fits one atomic write (PIPE_BUF, 4096 bytes): longer messages from several writers
    may interleave, as they would from shell tools.  ``create=True`` makes the FIFO (mode 0600 unless
    ``mode=``) and removes it on close; openers never do.
    """

    def __init__(self, endpoint: Endpoint, create: bool | str) -> None:
        path, mode = endpoint.address, endpoint.options.get("mode", DEFAULT_MODE)
        if create is True:
            fifo = Fifo.create(path, mode=mode)
        elif create == "if_missing":
            fifo = Fifo.open_or_create(path, mode=mode)
        else:
            fifo = Fifo.open(path)  # FileNotFoundError; InvalidEndpoint if not a FIFO
        try:
            try:
                fd = os.open(fifo.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"opening {endpoint}", path) from exc
            super().__init__(fd, str(endpoint))
            size = endpoint.options.get("pipe_size")
            if size is None:
                set_pipe_size(fd, PIPE_SIZE)
            elif set_pipe_size(fd, size) < size:
                self.close()
                raise LimitExceeded(errno.EPERM, f"{endpoint}: pipe_size={size} is above what the kernel grants "
                                    "(/proc/sys/fs/pipe-max-size, or the user's pipe pages)")
        except BaseException:
            fifo.close()
            raise
        self._fifo = fifo
        self.owner = fifo.owner

    def close(self) -> None:
        try:
            super().close()
        finally:
            fifo = getattr(self, "_fifo", None)
            if fifo is not None:
                fifo.close()  # the creator's handle removes the name (in the process that made it)

    def unlink(self) -> None:
        self._fifo.unlink()
        self.owner = False
