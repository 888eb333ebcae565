"""The one place where foreign errors become ipcraft's (STYLE.md R10).

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
             limits: Mapping[int, str] | None = None) -> OSError:
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
                limits: Mapping[int, str] | None = None) -> Iterator[None]:
    """Translate foreign exceptions raised inside the block into ipcraft's.

    OSErrors are re-raised as :func:`os_error` builds them (so errno is kept); posix_ipc's and
    sysv_ipc's classes become the matching OSError subclass or ipcraft error.  ipcraft's own
    exceptions pass through untouched.
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
            raise
        raise os_error(exc.errno, what, filename, limits) from exc
    except Exception as exc:
        mapped = _from_foreign(exc, what, filename, limits)
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
    threading says "release unlocked lock"); EDEADLK and ENOTRECOVERABLE stay OSErrors with their errno
    and a sentence saying what happened.  Anything else goes through :func:`os_error`.
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
    return os_error(err, what, filename, limits)


def _from_foreign(exc: Exception, what: str, filename: str | None,
                  limits: Mapping[int, str] | None) -> Exception | None:
    """Map a posix_ipc or sysv_ipc exception; None if ``exc`` comes from neither."""
    module = type(exc).__module__
    if module not in ("posix_ipc", "sysv_ipc"):
        return None
    name = type(exc).__name__
    text = str(exc)
    if name == "BusyError":
        return Timeout(f"{what}: timed out")
    if name == "PermissionsError":
        return PermissionError(_errno.EACCES, f"{what}: {text}", filename)
    if name == "ExistentialError":
        # posix_ipc and sysv_ipc use one class for EEXIST and ENOENT; the text tells them apart.
        err = _errno.EEXIST if "exist" in text.lower() and "no " not in text.lower() else _errno.ENOENT
        return os_error(err, what, filename, limits)
    if name == "NotAttachedError":
        return HandleClosed(f"{what}: {text}")
    if name == "SignalError":
        return InterruptedError(_errno.EINTR, f"{what}: interrupted by a signal")
    # The base Error (and sysv_ipc's InternalError) name no cause: keep the text, errno EIO, so that
    # nothing of these modules escapes untranslated.
    return OSError(_errno.EIO, f"{what}: {text} ({module}.{name})", filename)


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

    The queue reports its own conditions with errnos: EPROTO (the shared cursors are out of range: the
    queue is corrupt), EBADMSG (a corrupt record: what was pending was discarded, the queue is usable
    again), EMSGSIZE (a message that can never fit the ring), ETIMEDOUT, EBADF (closed meanwhile).
    """
    err = -rc
    if err == _errno.EPROTO:
        return ProtocolError(f"{what}: the queue's shared header is corrupt (its cursors are out of range); "
                             "it cannot be used until it is created anew")
    if err == _errno.EBADMSG:
        return ProtocolError(f"{what}: a corrupt record (its length check failed); every message pending "
                             "in the queue was discarded, since the next record boundary cannot be "
                             "trusted; the queue is usable again")
    if err == _errno.EMSGSIZE:
        return MessageTooLarge(f"{what}: a {size}-byte message exceeds the limit of {limit} bytes "
                               f"({limit_source})", size, limit)
    if err == _errno.ETIMEDOUT:
        return Timeout(f"{what}: timed out (nothing was transferred; still usable)")
    if err == _errno.EBADF:
        return HandleClosed(f"{what}: the queue was closed by another thread meanwhile")
    return os_error(err, what)
