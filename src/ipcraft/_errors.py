"""The one place where foreign errors become ipcraft's.

Sources: the kernel's errno (as OSError), posix_ipc's and sysv_ipc's exception classes (which are not
OSError subclasses and drop errno), and ipcraft._native's ``-errno`` return codes.  Nothing else in the
tree catches those classes or compares errno values to decide which ipcraft error to raise.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
from collections.abc import Iterator, Mapping

from .errors import (
    Busy,
    ChannelClosed,
    HandleClosed,
    LimitExceeded,
    MessageTooLarge,
    OwnerDied,
    PeerVanished,
    ProtocolError,
    Timeout,
)

# Errnos that mean "the other side is gone", for every transport.
_PEER_GONE = frozenset({_errno.EPIPE, _errno.ECONNRESET, _errno.ECONNABORTED, _errno.ENOTCONN})

# Process-wide limits whose knob is the same whatever was asked.
_GENERIC_LIMITS: Mapping[int, str] = {
    _errno.EMFILE: "RLIMIT_NOFILE (ulimit -n): too many open file descriptors in this process",
    _errno.ENFILE: "/proc/sys/fs/file-max: too many open files on the system",
}


def os_error(err: int, what: str, filename: str | None = None,
             limits: Mapping[int, str] | None = None) -> Exception:
    """Build the exception for kernel error number ``err`` while doing ``what`` (a short phrase).

    ``limits`` maps errnos that mean "a kernel limit refused this" in the caller's context to the
    knob that sets the limit; they become :class:`LimitExceeded`.
    """
    text = f"{what}: {os.strerror(err)}"
    knob = (limits or {}).get(err) or _GENERIC_LIMITS.get(err)
    if knob is not None:
        return LimitExceeded(err, f"{text} (limit: {knob})", filename)
    if err in _PEER_GONE:
        return PeerVanished(f"{what}: the peer vanished ({os.strerror(err)})", err)
    if err == _errno.ETIMEDOUT:
        return Timeout(f"{what}: timed out")
    if err == _errno.EMSGSIZE:
        return MessageTooLarge(text)
    if err == _errno.EBADF:
        return HandleClosed(f"{what}: the file descriptor is closed")
    # OSError(errno, ...) picks FileNotFoundError, PermissionError, ... by itself.
    return OSError(err, text, filename) if filename is not None else OSError(err, text)


@contextlib.contextmanager
def translating(what: str, filename: str | None = None,
                limits: Mapping[int, str] | None = None,
                remap: Mapping[int, int] | None = None) -> Iterator[None]:
    """Translate foreign exceptions raised inside the block into ipcraft's.

    OSErrors are re-raised as :func:`os_error` builds them (so errno is kept); posix_ipc's and
    sysv_ipc's classes become the matching OSError subclass or ipcraft error.  ipcraft's own
    exceptions pass through untouched.  ``remap`` replaces an errno that means something more
    specific in the caller's context (msgsnd's EINVAL on a validated call: the queue was removed).
    """
    try:
        yield
    except (ChannelClosed, HandleClosed, Timeout, MessageTooLarge, LimitExceeded):
        raise
    except BlockingIOError:
        raise
    except InterruptedError:
        raise
    except OSError as exc:
        if exc.errno is None:
            mapped = _from_foreign(exc, what, filename, limits, remap)  # posix_ipc/sysv_ipc: no errno
            if mapped is None:
                raise
            raise mapped from exc
        err = remap.get(exc.errno, exc.errno) if remap else exc.errno
        raise os_error(err, what, filename, limits) from exc
    except Exception as exc:
        mapped = _from_foreign(exc, what, filename, limits, remap)
        if mapped is None:
            raise
        raise mapped from exc


def check_rc(rc: int, what: str, filename: str | None = None,
             limits: Mapping[int, str] | None = None) -> int:
    """Return ``rc`` when it is >= 0; raise the translated error for a ``-errno`` from _native."""
    if rc < 0:
        raise os_error(-rc, what, filename, limits)
    return rc


def lock_error(err: int, what: str, filename: str | None = None,
               limits: Mapping[int, str] | None = None) -> Exception:
    """The exception for a lock-like operation (acquire, release, wait) that failed with ``err``.

    "Would block" (EAGAIN/EWOULDBLOCK/EBUSY/EACCES from a non-blocking try, ETIMEDOUT) is a
    :class:`Timeout`; EOWNERDEAD is :class:`OwnerDied`; EPERM from a release is a RuntimeError (as
    threading says "release unlocked lock"); EPROTO (a corrupt mutex, refused before pthread read it)
    is a :class:`ProtocolError`; EDEADLK and ENOTRECOVERABLE stay OSErrors with their errno and a
    sentence saying what happened.  Anything else goes through :func:`os_error`.
    """
    if err in (_errno.EAGAIN, _errno.EBUSY, _errno.EACCES, _errno.ETIMEDOUT):
        return Timeout(f"{what}: timed out")
    if err == _errno.EOWNERDEAD:
        return OwnerDied(f"{what}: the previous owner died while holding it; this thread holds it now. "
                         "Repair the protected data, call make_consistent(), then release()")
    if err == _errno.EPERM:
        return RuntimeError(f"{what}: not held by this thread")
    if err == _errno.EDEADLK:
        return OSError(err, f"{what}: would deadlock (EDEADLK): {os.strerror(err)}")
    if err == _errno.ENOTRECOVERABLE:
        return OSError(err, f"{what}: not recoverable: an owner died and the next holder released it "
                            "without make_consistent(); initialise it again with create()")
    if err == _errno.EPROTO:
        return ProtocolError(f"{what}: the mutex's words in shared memory are corrupt (values pthread never "
                             "writes: another process scribbled on them); it was left untouched. Initialise "
                             "it again with create() once nobody uses it")
    return os_error(err, what, filename, limits)


def spsc_error(rc: int, what: str, *, size: int | None = None, limit: int | None = None,
               limit_source: str = "") -> Exception:
    """The exception for ``-errno`` ``rc`` from an shm:// ring operation (_native.SpscPort).

    The ring reports its own conditions with errnos: EPROTO (a corrupt header, cursor or record),
    ESHUTDOWN (the other side closed cleanly), EPIPE (the other side died: a watched fd hung up),
    EBUSY (another thread holds a reserved or peeked record, or a copy), EMSGSIZE (the record cannot fit).
    """
    err = -rc
    if err == _errno.EPROTO:
        return ProtocolError(f"{what}: the shared ring is corrupt (a header, cursor or record length is "
                             "out of range); the channel cannot be trusted and should be closed")
    if err == _errno.ESHUTDOWN:
        return ChannelClosed(f"{what}: the peer closed the channel")
    if err == _errno.EPIPE:
        return PeerVanished(f"{what}: the peer vanished (its process ended without closing)", err)
    if err == _errno.EBUSY:
        return Busy(f"{what}: another thread is using this end of the ring (a reserved or peeked "
                    "record, or a copy in progress)")
    return ring_error(err, what, size, limit, limit_source)


def ring_error(err: int, what: str, size: int | None, limit: int | None, limit_source: str,
               closed: str | None = None) -> Exception:
    """What every shared-memory ring's errno means once its own conditions were looked at: EMSGSIZE (a
    message that can never fit), ETIMEDOUT (nothing transferred), EBADF (``closed`` says how the handle
    was closed meanwhile; without it EBADF is a plain OSError), anything else an OSError."""
    if err == _errno.EMSGSIZE:
        return MessageTooLarge(f"{what}: a {size}-byte message exceeds the limit of {limit} bytes "
                               f"({limit_source})", size, limit)
    if err == _errno.ETIMEDOUT:
        return Timeout(f"{what}: timed out (nothing was transferred; still usable)")
    if err == _errno.EBADF and closed is not None:
        return HandleClosed(f"{what}: {closed}")
    return os_error(err, what)


# posix_ipc and sysv_ipc drop errno: one ExistentialError stands for EEXIST, ENOENT, EIDRM and EBADF,
# and some failures are builtins without errno (OSError, ValueError, MemoryError).  Their messages are
# fixed strings in their C sources (checked against posix_ipc 1.3.2 and sysv_ipc 1.2.0; tests/
# test_errors_foreign.py provokes each one for real, so a release that rewords them fails loudly).
# First match wins: the specific phrases come before the general "does not exist".
_EXISTENTIAL_TEXTS: tuple[tuple[str, int], ...] = (
    ("already exists", _errno.EEXIST),
    ("no longer exists", _errno.EIDRM),
    ("was removed", _errno.EIDRM),
    ("does not exist or is not open", _errno.EBADF),   # mq_send/mq_receive EBADF
    ("the queue does not exist", _errno.EBADF),        # mq_getattr/mq_close/mq_notify on a bad mqd
    ("has been closed", _errno.EBADF),
    ("does not exist", _errno.ENOENT),
    ("no ", _errno.ENOENT),                            # "No queue exists with the specified name"
)

# Builtin exceptions these modules raise with a fixed text and no errno; matched exactly.
_BUILTIN_TEXTS: Mapping[str, int] = {
    "Insufficient space for a new queue": _errno.ENOSPC,                       # mq_open
    "The system limit for message queues has been reached": _errno.ENOSPC,     # msgget
    "Not enough shared memory identifiers available (ENOSPC)": _errno.ENOSPC,  # shmget
    "This process already has the maximum number of files open": _errno.EMFILE,
    "The system limit on the total number of open files has been reached": _errno.ENFILE,
    "Invalid parameter(s)": _errno.EINVAL,
    "The name is too long": _errno.ENAMETOOLONG,
    "The message is too long": _errno.EMSGSIZE,
    "Not enough memory": _errno.ENOMEM,
}


def _foreign_errno(exc: BaseException) -> int | None:
    """The errno a posix_ipc/sysv_ipc exception stands for, or None if ``exc`` is not one of theirs."""
    text = str(exc)
    module = type(exc).__module__
    if module in ("posix_ipc", "sysv_ipc"):
        name = type(exc).__name__
        if name == "ExistentialError":
            low = text.lower()
            return next((err for phrase, err in _EXISTENTIAL_TEXTS if phrase in low), _errno.ENOENT)
        if name == "PermissionsError":
            return _errno.EACCES
        if text == "Signaled while waiting":                                     # sysv_ipc.Error
            return _errno.EINTR
        return None
    if isinstance(exc, (OSError, ValueError, MemoryError)) and getattr(exc, "errno", None) is None:
        return _BUILTIN_TEXTS.get(text)
    return None


def _from_foreign(exc: Exception, what: str, filename: str | None,
                  limits: Mapping[int, str] | None,
                  remap: Mapping[int, int] | None = None) -> Exception | None:
    """Map a posix_ipc or sysv_ipc exception; None if ``exc`` comes from neither."""
    name = type(exc).__name__
    if type(exc).__module__ in ("posix_ipc", "sysv_ipc"):
        if name == "BusyError" and "notifications" in str(exc):  # mq_notify EBUSY
            return Busy(f"{what}: another process is already registered for notification")
        if name == "BusyError":
            return Timeout(f"{what}: timed out")
        if name == "NotAttachedError":
            return HandleClosed(f"{what}: {exc}")
        if name == "SignalError":
            return InterruptedError(_errno.EINTR, f"{what}: interrupted by a signal")
    err = _foreign_errno(exc)
    if err is None:
        if type(exc).__module__ not in ("posix_ipc", "sysv_ipc"):
            return None
        # The base Error (and sysv_ipc's InternalError) name no cause: keep the text, errno EIO, so
        # that nothing of these modules escapes untranslated.
        return OSError(_errno.EIO, f"{what}: {exc} ({type(exc).__module__}.{name})", filename)
    if remap:
        err = remap.get(err, err)
    if err == _errno.EACCES:
        return PermissionError(_errno.EACCES, f"{what}: {exc}", filename)
    if err == _errno.EINTR:
        return InterruptedError(_errno.EINTR, f"{what}: interrupted by a signal")
    return os_error(err, what, filename, limits)


def removed_as_vanished(exc: BaseException) -> BaseException:
    """For queue transports: an object removed under a handle (EIDRM) ends the queue for everyone,
    so it becomes :class:`PeerVanished` (an EOFError carrying errno); other exceptions are returned
    unchanged.  Raise the result with a plain ``raise``."""
    if isinstance(exc, OSError) and exc.errno == _errno.EIDRM:
        vanished = PeerVanished(str(exc), exc.errno)
        vanished.__cause__ = exc
        return vanished
    return exc


def translated(exc: BaseException, what: str, filename: str | None = None,
               limits: Mapping[int, str] | None = None,
               remap: Mapping[int, int] | None = None) -> BaseException:
    """The exception :func:`translating` would raise for ``exc`` (``exc`` itself if it needs none).

    For hot paths that catch first and translate only on failure, so the happy path pays neither a
    context manager nor the formatting of ``what``.  Raise the result with a plain ``raise``.
    """
    try:
        with translating(what, filename, limits, remap):
            raise exc
    except BaseException as mapped:  # noqa: BLE001 - handed back to the caller, who raises it
        return mapped


# sysv_ipc raises some kernel errors as builtin exceptions without an errno; these exact texts (from
# sysv_ipc's memory.c) tell which errno it was.
_SYSV_BUILTIN_TEXTS: Mapping[tuple[type, str], int] = {
    (ValueError, "The size is invalid"): _errno.EINVAL,
    (ValueError, "Invalid id, address, or flags"): _errno.EINVAL,
    (MemoryError, "Not enough memory"): _errno.ENOMEM,
    (OSError, "Not enough shared memory identifiers available (ENOSPC)"): _errno.ENOSPC,
}


@contextlib.contextmanager
def translating_sysv(what: str, filename: str | None = None,
                     limits: Mapping[int, str] | None = None) -> Iterator[None]:
    """:func:`translating`, plus the builtin exceptions sysv_ipc raises without an errno.

    sysv_ipc reports EINVAL as ``ValueError``, ENOMEM as ``MemoryError`` and ENOSPC as an OSError
    whose errno is None; they become :func:`os_error` of that errno, so ``limits`` can name the knob.
    """
    try:
        with translating(what, filename, limits):
            yield
    except (ValueError, MemoryError, OSError) as exc:
        err = _SYSV_BUILTIN_TEXTS.get((type(exc), str(exc)))
        if err is None or getattr(exc, "errno", None) is not None:
            raise
        raise os_error(err, what, filename, limits) from exc


def mpmc_error(rc: int, what: str, *, size: int | None = None, limit: int | None = None,
               limit_source: str = "") -> Exception:
    """The exception for ``-errno`` ``rc`` from a ring:// or file:// queue operation (_native.MpmcPort).

    The queue reports its own conditions with errnos: EPROTO (the shared cursors are out of range or
    misaligned, or a lock's words are corrupt: the queue is corrupt), EBADMSG (a corrupt record: what
    was pending was discarded, the queue is usable again), EMSGSIZE (a message that can never fit the
    ring), ETIMEDOUT, EBADF (closed meanwhile).
    """
    err = -rc
    if err == _errno.EPROTO:
        return ProtocolError(f"{what}: the queue's shared header is corrupt (its cursors are out of range or "
                             "not record-aligned, or a lock's words hold values pthread never writes); it "
                             "cannot be used until it is created anew")
    if err == _errno.EBADMSG:
        return ProtocolError(f"{what}: a corrupt record (its length check failed); every message pending "
                             "in the queue was discarded, since the next record boundary cannot be "
                             "trusted; the queue is usable again")
    return ring_error(err, what, size, limit, limit_source, "the queue was closed by another thread meanwhile")
