"""ipcraft's exceptions.

Every exception ipcraft raises on purpose is an :class:`IPCError`, and each also inherits the builtin a
Python user would already catch::

    IPCError
     + ChannelClosed (EOFError)        the peer closed cleanly
     |  - PeerVanished                 the peer died (EPIPE, ECONNRESET, a dead pid, a closed rendezvous)
     + HandleClosed (ValueError)       *your* code closed the handle, then used it
     + Timeout (TimeoutError)          a deadline passed before the operation could complete
     + Busy (RuntimeError)             another thread is already sending/receiving on this handle
     + MessageTooLarge (ValueError)    a message exceeds a limit; the message names the limit and its source
     |  - BufferTooSmall               recv_bytes_into() got a buffer smaller than the message (kept in .data)
     + ProtocolError                   a bad frame, magic, version or serializer id; a corrupt shared header
     + AuthenticationError             a peer failed the authkey handshake or the peer-credential policy
     + InvalidEndpoint (ValueError)    a malformed URL, an unknown scheme or option, a bad name
     + LimitExceeded (OSError)         a kernel limit refused the request; names the /proc knob or rlimit
     + OwnerDied                       a robust mutex's owner died holding it; you hold it now, repair
     + MessagesMissed                  a subscriber fell behind and messages it never saw were overwritten
        - SubscriberEvicted            a subscriber was evicted for being too slow (or dead-looking)

Plain kernel failures stay :class:`OSError` subclasses with their ``errno`` (FileNotFoundError,
FileExistsError, PermissionError, ...).  Exceptions of posix_ipc and sysv_ipc never escape untranslated.

Each ``Raises:`` section in ipcraft says what state an error leaves the object in: still usable, or
closed.  Never half-broken.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "IPCError",
    "ChannelClosed",
    "PeerVanished",
    "HandleClosed",
    "Timeout",
    "Busy",
    "MessageTooLarge",
    "BufferTooSmall",
    "ProtocolError",
    "AuthenticationError",
    "InvalidEndpoint",
    "LimitExceeded",
    "OwnerDied",
    "MessagesMissed",
    "SubscriberEvicted",
)


class IPCError(Exception):
    """Base of every exception ipcraft raises on purpose."""


class ChannelClosed(IPCError, EOFError):
    """The other side closed the channel cleanly: no more messages will arrive.

    Raised by ``recv`` after the last message has been delivered, and by ``send`` when the peer has
    gone.  The handle stays open (call ``close()``); every later ``recv`` raises again.
    """


class PeerVanished(ChannelClosed):
    """The peer died or dropped the connection abruptly (EPIPE, ECONNRESET, a dead pid).

    ``errno`` holds the kernel's error number when one caused it, else ``None``.  A message that was
    partly sent or received when the peer vanished is lost; the handle should be closed.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class HandleClosed(IPCError, ValueError):
    """*Your* code closed this handle and then used it.

    Distinct from :class:`ChannelClosed`, which is about the peer: the two need different fixes.
    """


class Timeout(IPCError, TimeoutError):
    """A deadline passed before the operation completed.

    The state it leaves is in two attributes, never only in the text:

    * ``written``: how many bytes of the message went out before the deadline (0 for most
      operations: a message transport sends a whole message or nothing).  A byte stream cannot take
      back a partial write, so a primitive's ``write`` reports where it stopped.
    * ``closed``: True when the handle was closed because of the timeout: a channel over a byte
      stream whose send stopped in the middle of a frame (the stream cannot be resumed there).  False
      means the handle is still usable.

    .. versionchanged:: 0.2
       ``written`` and ``closed`` are declared attributes with defaults (0 and False).
    """

    written: int
    closed: bool

    def __init__(self, message: str = "", *, written: int = 0, closed: bool = False) -> None:
        super().__init__(message)
        self.written = written
        self.closed = closed

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_timeout, (type(self), str(self), self.written, self.closed)


class Busy(IPCError, RuntimeError):
    """Another thread is already sending (or receiving) on this handle.

    Two concurrent receivers on one byte stream would interleave frames, so the second is refused
    instead.  The handle is still usable.
    """


class MessageTooLarge(IPCError, ValueError):
    """A message exceeds a size limit.  The text names the limit, its value and where it comes from.

    ``size`` is the offending size in bytes and ``limit`` the limit, when known.  Nothing was sent or
    kept; the handle is still usable.
    """

    def __init__(self, message: str, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class BufferTooSmall(MessageTooLarge):
    """``recv_bytes_into`` was given a buffer smaller than the message.

    The whole message is kept in ``data`` (as ``multiprocessing``'s ``BufferTooShort`` does), so
    nothing is lost.  The handle is still usable.
    """

    def __init__(self, message: str, data: bytes, limit: int) -> None:
        super().__init__(message, size=len(data), limit=limit)
        self.data = data


class ProtocolError(IPCError):
    """Bytes arrived that do not follow ipcraft's wire or shared-memory format.

    A bad frame header, magic, version or serializer id, or a corrupt shared-memory header.  A byte
    stream cannot be resynchronised after a bad header, so such a channel is closed: ``closed`` is
    then True.  False means the handle is still usable (a message transport dropped the bad message).

    .. versionchanged:: 0.2
       ``closed`` is a declared attribute (default False).
    """

    closed: bool

    def __init__(self, message: str = "", *, closed: bool = False) -> None:
        super().__init__(message)
        self.closed = closed

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_protocol_error, (type(self), str(self), self.closed)


class AuthenticationError(IPCError):
    """The peer failed authentication: a wrong authkey, or peer credentials the policy refuses.

    The connection is closed.
    """


class InvalidEndpoint(IPCError, ValueError):
    """A URL, scheme, option or name is malformed or unknown.  The text names the valid choices."""


class LimitExceeded(IPCError, OSError):
    """A kernel limit refused the request.

    Carries ``errno`` like any OSError, and the message names the knob: a /proc/sys file or an rlimit.
    """


class OwnerDied(IPCError):
    """The process (or thread) that held a robust mutex died without releasing it.

    The kernel released the mutex on the owner's death and handed it to the caller, which **now holds
    it**.  The data it protects may be half-updated: repair it, call ``make_consistent()`` on the
    mutex, then release it.  Releasing without ``make_consistent()`` marks the mutex permanently
    unusable (ENOTRECOVERABLE), so that nobody trusts data the repair never checked.
    """


def _rebuild_protocol_error(cls: type[ProtocolError], message: str, closed: bool) -> ProtocolError:
    """Unpickle a ProtocolError with its ``closed`` attribute."""
    return cls(message, closed=closed)


def _rebuild_timeout(cls: type[Timeout], message: str, written: int, closed: bool) -> Timeout:
    """Unpickle a Timeout with its attributes (they are keyword-only, which pickle's default cannot pass)."""
    return cls(message, written=written, closed=closed)


class MessagesMissed(IPCError):
    """A subscriber of a broadcast (``bcast://``, drop mode) was lapped: messages it had not read yet were
    overwritten by newer ones.

    ``missed`` is the exact number of messages it will never see.  Nothing torn or repeated was
    delivered; the subscriber is still usable and its next ``recv`` returns the oldest message still
    present.  The running total is ``Subscriber.missed``.

    .. versionadded:: 0.2
    """

    def __init__(self, message: str, missed: int) -> None:
        super().__init__(message)
        self.missed = missed

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.missed)


class SubscriberEvicted(MessagesMissed):
    """A subscriber of a broadcast in block mode made no progress for ``slow_timeout`` seconds (or looked
    dead), and the publishers evicted it so as not to wait for it any longer.

    ``missed`` is the number of messages it lost meanwhile.  The subscriber is still usable: it has
    rejoined and its next ``recv`` returns the oldest message still present.

    .. versionadded:: 0.2
    """
