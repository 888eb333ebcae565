"""posix_ipc's and sysv_ipc's exceptions become the right OSError subclass or ipcraft error, errno set.

Each case provokes the real error from the real module, so a release that rewords a message (the
only thing that tells EEXIST from ENOENT there) fails here instead of misleading users.
"""

from __future__ import annotations

import errno

import posix_ipc
import pytest
import sysv_ipc

from ipcraft._errors import translated, translating
from ipcraft.errors import Busy, HandleClosed, LimitExceeded, MessageTooLarge, Timeout
from ipcraft.testing import run_in_child, unique_key, unique_name


def _caught(fn) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return translated(exc, "doing it", "obj")
    raise AssertionError("no exception")


@pytest.fixture()
def pq():
    """A fresh POSIX queue, unlinked afterwards."""
    q = posix_ipc.MessageQueue("/" + unique_name("e"), posix_ipc.O_CREX, max_messages=1, max_message_size=8)
    yield q
    try:
        q.close()
    except Exception:  # noqa: BLE001 - a test closed it already
        pass
    try:
        posix_ipc.unlink_message_queue(q.name)
    except posix_ipc.ExistentialError:
        pass


def test_posix_exists_and_missing_are_told_apart(pq):
    """EEXIST and ENOENT, which posix_ipc raises as one class, become FileExistsError/FileNotFoundError."""
    exc = _caught(lambda: posix_ipc.MessageQueue(pq.name, posix_ipc.O_CREX))
    assert type(exc) is FileExistsError and exc.errno == errno.EEXIST
    exc = _caught(lambda: posix_ipc.MessageQueue(pq.name + "x"))
    assert type(exc) is FileNotFoundError and exc.errno == errno.ENOENT
    exc = _caught(lambda: posix_ipc.unlink_message_queue(pq.name + "x"))
    assert type(exc) is FileNotFoundError


def test_posix_closed_descriptor_is_handle_closed(pq):
    """Using a closed posix_ipc queue ("does not exist or is not open") is EBADF: HandleClosed."""
    pq.close()
    assert isinstance(_caught(lambda: pq.receive(0)), HandleClosed)
    assert isinstance(_caught(lambda: pq.current_messages), HandleClosed)


def test_posix_busy_and_invalid(pq):
    """A timed-out call is Timeout; mq_open's "Invalid parameter(s)" keeps EINVAL; a second
    notification registration is Busy."""
    assert isinstance(_caught(lambda: pq.receive(0)), Timeout)
    exc = _caught(lambda: posix_ipc.MessageQueue("/" + unique_name("e"), posix_ipc.O_CREX, max_messages=0))
    assert type(exc) is OSError and exc.errno == errno.EINVAL
    with pytest.raises(LimitExceeded, match="the knob"):
        with translating("creating", limits={errno.EINVAL: "the knob"}):
            posix_ipc.MessageQueue("/" + unique_name("e"), posix_ipc.O_CREX, max_messages=0)
    pq.request_notification((lambda _: None, None))

    def register_too() -> str:  # in another process: within one, posix_ipc replaces the registration
        other = posix_ipc.MessageQueue(pq.name)
        try:
            return type(_caught(lambda: other.request_notification(10))).__name__
        finally:
            other.close()
    try:
        assert run_in_child(register_too, timeout=10) == Busy.__name__
    finally:
        pq.request_notification(None)


def test_sysv_exists_missing_and_removed():
    """sysv_ipc's ExistentialError becomes EEXIST, ENOENT or EIDRM as its text says."""
    key = unique_key()
    q = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX)
    try:
        exc = _caught(lambda: sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX))
        assert type(exc) is FileExistsError
    finally:
        q.remove()
    exc = _caught(lambda: sysv_ipc.MessageQueue(key))
    assert type(exc) is FileNotFoundError
    exc = _caught(lambda: q.receive(False))
    assert type(exc) is OSError and exc.errno == errno.EIDRM
    exc = _caught(q.remove)
    assert exc.errno == errno.EIDRM
    # msgsnd on a removed id fails with a bare EINVAL; remap says what it means in that context.
    with pytest.raises(OSError) as info, translating("sending", remap={errno.EINVAL: errno.EIDRM}):
        q.send(b"x")
    assert info.value.errno == errno.EIDRM


def test_sysv_nowait_is_timeout():
    """sysv_ipc's BusyError (IPC_NOWAIT, nothing there) becomes Timeout."""
    q = sysv_ipc.MessageQueue(unique_key(), sysv_ipc.IPC_CREX)
    try:
        assert isinstance(_caught(lambda: q.receive(False)), Timeout)
    finally:
        q.remove()


@pytest.mark.parametrize(("exc", "expected"), [
    (posix_ipc.ExistentialError("A semaphore with the specified name already exists"), FileExistsError),
    (posix_ipc.ExistentialError("No shared memory exists with the specified name"), FileNotFoundError),
    (posix_ipc.ExistentialError("The semaphore does not exist"), FileNotFoundError),
    (posix_ipc.ExistentialError("The queue does not exist"), HandleClosed),
    (posix_ipc.ExistentialError("The semaphore has been closed"), HandleClosed),
    (posix_ipc.PermissionsError("Permission denied"), PermissionError),
    (posix_ipc.SignalError("The wait was interrupted by a signal"), InterruptedError),
    (sysv_ipc.ExistentialError("Shared memory with the key 5 already exists"), FileExistsError),
    (sysv_ipc.ExistentialError("No shared memory with id 3 exists"), FileNotFoundError),
    (sysv_ipc.ExistentialError("The semaphore was removed"), OSError),
    (sysv_ipc.Error("Signaled while waiting"), InterruptedError),
    (OSError("Insufficient space for a new queue"), OSError),
    (OSError("This process already has the maximum number of files open"), LimitExceeded),
    (ValueError("The message is too long"), MessageTooLarge),
    (MemoryError("Not enough memory"), OSError),
])
def test_every_known_text_maps_as_documented(exc, expected):
    """Each fixed message of the two modules maps to the documented class, with errno set."""
    mapped = translated(exc, "doing it")
    assert type(mapped) is expected or (expected is OSError and type(mapped) is OSError)
    if isinstance(mapped, OSError):
        assert mapped.errno is not None


def test_unrelated_exceptions_pass_through():
    """An exception from elsewhere, even a ValueError, is returned untouched."""
    err = ValueError("some other problem")
    assert translated(err, "doing it") is err
    err2 = OSError("no errno here")
    assert translated(err2, "doing it") is err2
