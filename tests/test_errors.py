"""The error tree and its one translation point: every errno, and posix_ipc/sysv_ipc's classes."""

from __future__ import annotations

import errno
import os

import posix_ipc
import pytest
import sysv_ipc

from ipcraft import errors as E
from ipcraft._errors import _GENERIC_LIMITS, _PEER_GONE, check_rc, os_error, translating
from ipcraft.testing import unique_key, unique_name

SPECIAL = {errno.ETIMEDOUT: E.Timeout, errno.EMSGSIZE: E.MessageTooLarge, errno.EBADF: E.HandleClosed}


@pytest.mark.parametrize("err", sorted(errno.errorcode), ids=lambda e: errno.errorcode[e])
def test_every_errno_maps_to_its_documented_class(err: int) -> None:
    """os_error() gives PeerVanished for a gone peer, LimitExceeded for process limits, the ipcraft class
    for ETIMEDOUT/EMSGSIZE/EBADF, and otherwise the builtin OSError subclass; errno is kept."""
    exc = os_error(err, "sending on unix:///x")
    assert "sending on unix:///x" in str(exc), str(exc)
    if err in _PEER_GONE:
        assert type(exc) is E.PeerVanished and exc.errno == err
    elif err in _GENERIC_LIMITS:
        assert type(exc) is E.LimitExceeded and exc.errno == err and "limit:" in str(exc)
    elif err in SPECIAL:
        assert type(exc) is SPECIAL[err]
    else:
        assert type(exc) is type(OSError(err, "x")) and exc.errno == err
        assert os.strerror(err) in str(exc)


def test_caller_limits_become_limit_exceeded() -> None:
    """An errno the caller names as a kernel limit is LimitExceeded naming the knob, errno and filename kept."""
    exc = os_error(errno.ENOSPC, "creating mq://jobs", "/jobs",
                   limits={errno.ENOSPC: "/proc/sys/fs/mqueue/queues_max"})
    assert isinstance(exc, E.LimitExceeded) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC and exc.filename == "/jobs"
    assert "/proc/sys/fs/mqueue/queues_max" in str(exc)
    assert type(os_error(errno.ENOENT, "opening", "/x")) is FileNotFoundError


def test_mro() -> None:
    """Each class is an IPCError and also the builtin a Python user would catch."""
    expect = {
        E.ChannelClosed: EOFError, E.PeerVanished: E.ChannelClosed, E.HandleClosed: ValueError,
        E.Timeout: TimeoutError, E.Busy: RuntimeError, E.MessageTooLarge: ValueError,
        E.BufferTooSmall: E.MessageTooLarge, E.InvalidEndpoint: ValueError, E.LimitExceeded: OSError,
    }
    for cls, builtin in expect.items():
        assert issubclass(cls, E.IPCError) and issubclass(cls, builtin), cls
    assert issubclass(E.ProtocolError, E.IPCError) and issubclass(E.AuthenticationError, E.IPCError)
    assert not issubclass(E.HandleClosed, E.ChannelClosed), "our own close is not the peer's"
    assert E.LimitExceeded(errno.EMFILE, "too many").errno == errno.EMFILE
    assert E.PeerVanished("gone", errno.EPIPE).errno == errno.EPIPE
    big = E.MessageTooLarge("big", 10, 5)
    assert (big.size, big.limit) == (10, 5)
    small = E.BufferTooSmall("small", b"data", 2)
    assert (small.data, small.size, small.limit) == (b"data", 4, 2)
    assert set(E.__all__) == {n for n in dir(E) if isinstance(getattr(E, n), type)
                              and issubclass(getattr(E, n), E.IPCError)}


def test_check_rc() -> None:
    """A native return code >= 0 passes through; -errno raises the translated error."""
    assert check_rc(5, "waiting") == 5
    with pytest.raises(E.Timeout):
        check_rc(-errno.ETIMEDOUT, "waiting on a futex")
    with pytest.raises(PermissionError):
        check_rc(-errno.EPERM, "waking")


def test_translating_kernel_errors() -> None:
    """OSErrors become the translated class with errno and filename; ipcraft's own and the
    retry-signalling builtins pass through untouched."""
    with pytest.raises(FileNotFoundError) as info:
        with translating("opening the config", "/nonexistent/x"):
            open("/nonexistent/x")
    assert info.value.errno == errno.ENOENT and info.value.filename == "/nonexistent/x"
    assert "opening the config" in str(info.value)
    for exc in (BlockingIOError(errno.EAGAIN, "again"), InterruptedError(errno.EINTR, "intr"),
                E.Timeout("t"), E.PeerVanished("p"), ValueError("v"), OSError("no errno")):
        with pytest.raises(type(exc)) as caught:
            with translating("x"):
                raise exc
        assert caught.value is exc


def test_posix_ipc_exceptions_are_translated() -> None:
    """posix_ipc's classes (which carry no errno) become OSError subclasses with errno, or Timeout."""
    name = "/" + unique_name("err")
    with pytest.raises(FileNotFoundError) as missing:
        with translating(f"opening mq:/{name}", name):
            posix_ipc.MessageQueue(name)
    assert missing.value.errno == errno.ENOENT and missing.value.filename == name
    q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX)
    try:
        with pytest.raises(FileExistsError) as exists:
            with translating("creating", name):
                posix_ipc.MessageQueue(name, posix_ipc.O_CREX)
        assert exists.value.errno == errno.EEXIST
        with pytest.raises(E.Timeout):
            with translating("receiving"):
                q.receive(0)
    finally:
        q.close()
        q.unlink()
    with pytest.raises(PermissionError) as perm:
        with translating("opening"):
            raise posix_ipc.PermissionsError("Permission denied")
    assert perm.value.errno == errno.EACCES
    with pytest.raises(InterruptedError):
        with translating("waiting"):
            raise posix_ipc.SignalError("interrupted")


def test_sysv_ipc_exceptions_are_translated() -> None:
    """sysv_ipc's classes become OSError subclasses with errno, Timeout or HandleClosed."""
    key = unique_key()
    with pytest.raises(FileNotFoundError) as missing:
        with translating("opening sysvmq"):
            sysv_ipc.MessageQueue(key)
    assert missing.value.errno == errno.ENOENT
    mq = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX)
    try:
        with pytest.raises(FileExistsError):
            with translating("creating sysvmq"):
                sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX)
        with pytest.raises(E.Timeout):
            with translating("receiving"):
                mq.receive(block=False)
    finally:
        mq.remove()
    shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=4096)
    shm.detach()
    try:
        with pytest.raises(E.HandleClosed):
            with translating("reading"):
                shm.read(1)
    finally:
        shm.remove()


@pytest.mark.parametrize("cls", [c for m in (posix_ipc, sysv_ipc) for c in vars(m).values()
                                 if isinstance(c, type) and issubclass(c, Exception)],
                         ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_no_foreign_class_escapes(cls: type[Exception]) -> None:
    """Every exception class of posix_ipc and sysv_ipc is translated into an OSError subclass with an
    errno or into an ipcraft error: none escapes as itself."""
    with pytest.raises(Exception) as info:
        with translating("doing something"):
            raise cls("some failure")
    assert not isinstance(info.value, (posix_ipc.Error, sysv_ipc.Error)), f"{cls.__name__} escaped"
    assert isinstance(info.value, E.IPCError) or (isinstance(info.value, OSError) and info.value.errno)


def test_timeout_and_protocol_error_carry_their_state_as_attributes() -> None:
    """Timeout.written/closed and ProtocolError.closed are declared, default to "nothing done, still
    usable", survive pickling (a Child sends exceptions back that way), and are keyword-only."""
    import pickle

    plain = E.Timeout("receiving on x: timed out")
    assert (plain.written, plain.closed) == (0, False)
    cut = E.Timeout("sending on x: cut", written=12, closed=True)
    back = pickle.loads(pickle.dumps(cut))
    assert type(back) is E.Timeout and str(back) == str(cut) and (back.written, back.closed) == (12, True)
    assert isinstance(back, TimeoutError)
    bad = pickle.loads(pickle.dumps(E.ProtocolError("bad frame", closed=True)))
    assert type(bad) is E.ProtocolError and bad.closed and not E.ProtocolError("x").closed
    with pytest.raises(TypeError):
        E.Timeout("x", 3)  # type: ignore[misc]  # positional state would be ambiguous
    assert set(E.Timeout.__annotations__) == {"written", "closed"}
