"""PosixSharedMemory and SysVSharedMemory against the real kernel, across real processes."""

from __future__ import annotations

import errno
import gc
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from ipcraft.errors import HandleClosed, InvalidEndpoint, LimitExceeded
from ipcraft.primitives.shm import (
    SHM_DIR,
    PosixSharedMemory,
    SysVSharedMemory,
    remove_sysv_shm,
    unlink_posix_shm,
)
from ipcraft.testing import run_in_child, unique_key, unique_name


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def _sysv_exists(key: int) -> bool:
    with open("/proc/sysvipc/shm") as f:
        next(f)
        return any(int(line.split()[0]) == key for line in f)


def _as_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


def _run_python(code: str) -> None:
    """Run ``code`` in a fresh interpreter that exits normally (atexit handlers and all)."""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


@pytest.fixture()
def posix():
    """A factory of owner segments that are always closed (and so unlinked) at teardown."""
    made: list[PosixSharedMemory] = []

    def make(size: int = 4096, **kw) -> PosixSharedMemory:
        shm = PosixSharedMemory.create(unique_name("shm"), size, **kw)
        made.append(shm)
        return shm

    yield make
    for shm in made:
        shm.close()


@pytest.fixture()
def sysv():
    """A factory of owner System V segments that are always closed (and so removed) at teardown."""
    made: list[SysVSharedMemory] = []

    def make(size: int = 4096, **kw) -> SysVSharedMemory:
        shm = SysVSharedMemory.create(unique_key(), size, **kw)
        made.append(shm)
        return shm

    yield make
    for shm in made:
        shm.close()


# ---- POSIX ------------------------------------------------------------------------------------------

def test_posix_child_writes_parent_reads(posix):
    """Bytes a child writes through its own handle are read by the parent's."""
    shm = posix(8192)

    def child() -> None:
        with PosixSharedMemory.open(shm.name) as other:
            other.buf[4000:4005] = b"hello"

    run_in_child(child)
    assert bytes(shm.buf[4000:4005]) == b"hello"
    assert bytes(shm.buf[:4]) == b"\0\0\0\0"


def test_posix_opener_never_unlinks(posix):
    """A process that only opened leaves the segment in place through close() and interpreter exit."""
    shm = posix()
    shm.buf[0] = 7
    _run_python(
        "from ipcraft.primitives.shm import PosixSharedMemory as P\n"
        f"s = P.open({shm.name!r}); assert s.buf[0] == 7; assert not s.owner; s.close()\n"
        "t = P.open(" + repr(shm.name) + ")\n"  # and one left open at exit
        "import sys; assert 'multiprocessing.resource_tracker' not in sys.modules\n")
    assert _exists(shm.name)
    with PosixSharedMemory.open(shm.name) as again:
        assert again.buf[0] == 7


def test_posix_owner_unlinks_on_close():
    """close() of the handle create() made removes the name."""
    shm = PosixSharedMemory.create(unique_name(), 100)
    assert shm.owner and shm.unlink_on_close and _exists(shm.name)
    shm.close()
    assert not _exists(shm.name)
    shm.close()  # idempotent
    assert shm.closed


def test_posix_release_ownership_keeps_the_name():
    """After release_ownership() (or unlink_on_close=False) close() leaves the name for someone else."""
    a = PosixSharedMemory.create(unique_name(), 100)
    a.release_ownership()
    a.close()
    assert _exists(a.name)
    b = PosixSharedMemory.open(a.name)
    b.unlink_on_close = True  # not the owner: the flag alone does not make it unlink
    b.close()
    assert _exists(a.name)
    unlink_posix_shm(a.name)
    assert not _exists(a.name)


def test_posix_open_missing():
    """open() of a name nobody created raises FileNotFoundError with errno ENOENT."""
    with pytest.raises(FileNotFoundError) as info:
        PosixSharedMemory.open(unique_name())
    assert info.value.errno == errno.ENOENT
    assert "POSIX shared memory" in str(info.value)


def test_posix_create_existing(posix):
    """create() of an existing name raises FileExistsError and leaves the existing segment alone."""
    shm = posix(4096)
    shm.buf[0] = 9
    with pytest.raises(FileExistsError) as info:
        PosixSharedMemory.create(shm.name, 100)
    assert info.value.errno == errno.EEXIST
    assert shm.buf[0] == 9 and os.stat(os.path.join(SHM_DIR, shm.name[1:])).st_size == 4096


def test_posix_nobody_gets_permission_error(posix):
    """Another user opening a 0600 segment gets PermissionError (EACCES), read-only or not."""
    shm = posix(mode=0o600)

    def child() -> list[int]:
        _as_nobody()
        codes = []
        for readonly in (False, True):
            try:
                PosixSharedMemory.open(shm.name, readonly=readonly)
            except PermissionError as exc:
                codes.append(exc.errno)
        return codes

    assert run_in_child(child) == [errno.EACCES, errno.EACCES]


def test_posix_nobody_reads_a_0644_segment_readonly(posix):
    """Another user may open a 0644 segment read-only and sees the owner's bytes."""
    shm = posix(mode=0o644)
    shm.buf[:3] = b"abc"

    def child() -> bytes:
        _as_nobody()
        with PosixSharedMemory.open(shm.name, readonly=True) as ro:
            return bytes(ro.buf[:3])

    assert run_in_child(child) == b"abc"


def test_posix_mode_is_exact(posix):
    """The mode given to create() is the segment's mode, whatever the umask."""
    old = os.umask(0o077)
    try:
        shm = posix(mode=0o640)
    finally:
        os.umask(old)
    assert os.stat(os.path.join(SHM_DIR, shm.name[1:])).st_mode & 0o777 == 0o640


def test_posix_numpy_shared_across_processes(posix):
    """A numpy array over the segment in a child and one in the parent share the same memory."""
    shm = posix(8 * 100)
    arr = shm.as_numpy(np.float64)
    arr[:] = np.arange(100)

    def child() -> None:
        with PosixSharedMemory.open(shm.name) as other:
            view = other.as_numpy(np.float64, (10, 10))
            view *= 2
            del view

    run_in_child(child)
    assert arr.shape == (100,) and arr[99] == 198.0
    del arr


def test_posix_numpy_shape_offset_and_errors(posix):
    """as_numpy honours shape and offset and refuses, naming the sizes, what does not fit."""
    shm = posix(64)
    a = shm.as_numpy("u4", (2, 3), offset=8)
    a[1, 2] = 0xDEADBEEF
    assert bytes(shm.buf[28:32]) == (0xDEADBEEF).to_bytes(4, sys.byteorder)
    with pytest.raises(ValueError, match="needs 68 bytes"):
        shm.as_numpy("u4", 17)
    with pytest.raises(ValueError, match="outside"):
        shm.as_numpy("u1", offset=65)
    del a


def test_posix_resize_grow_shrink_and_remap(posix):
    """resize() keeps the bytes that remain, and another handle sees the new size after remap()."""
    shm = posix(4096)
    shm.buf[:5] = b"keep!"
    other = PosixSharedMemory.open(shm.name)
    try:
        shm.resize(3 * 4096)
        assert shm.size == 3 * 4096 and os.fstat(shm.fileno()).st_size == 3 * 4096
        shm.buf[-1] = 1
        assert other.size == 4096
        other.remap()
        assert other.size == 3 * 4096 and other.buf[-1] == 1 and bytes(other.buf[:5]) == b"keep!"
        other.resize(10)
        shm.remap()
        assert shm.size == 10 and bytes(shm.buf[:5]) == b"keep!"
    finally:
        other.close()


def test_posix_resize_refused_while_views_live(posix):
    """resize() with a live memoryview slice or array raises BufferError and changes nothing."""
    shm = posix(4096)
    view = shm.buf[10:20]
    with pytest.raises(BufferError, match="still alive"):
        shm.resize(8192)
    assert shm.size == 4096 and os.fstat(shm.fileno()).st_size == 4096
    view.release()
    arr = shm.as_numpy("u1")
    with pytest.raises(BufferError):
        shm.resize(100)
    del arr
    shm.resize(100)
    assert shm.size == 100


def test_posix_close_with_live_view_keeps_memory_mapped():
    """close() with a live view closes the handle, and the view stays valid until released."""
    shm = PosixSharedMemory.create(unique_name(), 4096)
    view = shm.buf
    shm.close()
    assert shm.closed and not _exists(shm.name)
    view[0] = 42  # still mapped: no crash
    assert view[0] == 42
    with pytest.raises(HandleClosed):
        shm.buf
    with pytest.raises(HandleClosed):
        shm.size
    view.release()


def test_posix_readonly_handle(posix):
    """A read-only handle gives read-only views and arrays and refuses resize()."""
    shm = posix(4096)
    with PosixSharedMemory.open(shm.name, readonly=True) as ro:
        assert ro.readonly and ro.buf.readonly
        assert not ro.as_numpy("u1").flags.writeable
        with pytest.raises(TypeError):
            ro.buf[0] = 1
        with pytest.raises(io.UnsupportedOperation):
            ro.resize(8192)


@pytest.mark.parametrize("name", ["", "/", "a/b", "..", ".", "x" * 256, "a\0b"])
def test_posix_bad_names(name):
    """Names that are not one path component of at most 255 bytes raise InvalidEndpoint."""
    with pytest.raises(InvalidEndpoint):
        PosixSharedMemory.create(name, 100)
    with pytest.raises(InvalidEndpoint):
        PosixSharedMemory.open(name)


def test_posix_bad_sizes_and_modes():
    """A size below 1 byte or a mode outside 0o777 is refused before anything is created."""
    name = unique_name()
    with pytest.raises(ValueError, match="at least 1 byte"):
        PosixSharedMemory.create(name, 0)
    with pytest.raises(TypeError):
        PosixSharedMemory.create(name, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0o777"):
        PosixSharedMemory.create(name, 10, mode=0o1777)
    assert not _exists(name)


def test_posix_too_big_names_the_tmpfs():
    """A segment larger than the tmpfs at /dev/shm is LimitExceeded naming it, and leaves nothing."""
    st = os.statvfs(SHM_DIR)
    name = unique_name()
    with pytest.raises(LimitExceeded) as info:
        PosixSharedMemory.create(name, st.f_blocks * st.f_frsize + 4096)
    assert info.value.errno == errno.ENOSPC and "/dev/shm" in str(info.value)
    assert not _exists(name)


def test_posix_open_or_create(posix):
    """open_or_create() creates (owner) when missing, else opens at the existing size (not owner)."""
    name = unique_name()
    a = PosixSharedMemory.open_or_create(name, 4096)
    b = PosixSharedMemory.open_or_create(name, 99999)
    try:
        assert a.owner and not b.owner and b.size == 4096
    finally:
        b.close()
        a.close()
    assert not _exists(name)


def test_posix_owner_spares_a_recreated_name():
    """An owner whose name was unlinked and created anew by someone else does not unlink the new one."""
    a = PosixSharedMemory.create(unique_name(), 100)
    a.unlink()
    assert not a.owner
    b = PosixSharedMemory.create(a.name, 100)
    a.unlink_on_close = True
    a._owner = True  # pretend ownership survived: close() must still check it is the same file
    a.close()
    assert _exists(b.name)
    b.close()
    assert not _exists(b.name)


def test_posix_unclosed_handle_warns_and_cleans_up():
    """A handle garbage-collected open warns ResourceWarning and still unlinks as its owner."""
    name = unique_name()
    shm = PosixSharedMemory.create(name, 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del shm
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert not _exists(name)


def test_posix_repr_and_no_public_constructor(posix):
    """repr shows name, size and state; the class has no public constructor."""
    shm = posix(4096)
    assert repr(shm) == f"<PosixSharedMemory {shm.name!r} size=4096 owner>"
    with pytest.raises(TypeError, match="create"):
        PosixSharedMemory()
    shm.close()
    assert repr(shm).endswith("closed>")


# ---- System V ---------------------------------------------------------------------------------------

def test_sysv_child_writes_parent_reads(sysv):
    """Bytes a child writes through its own attachment are read by the parent's."""
    shm = sysv(4096)

    def child() -> None:
        with SysVSharedMemory.open(shm.key) as other:
            other.buf[100:105] = b"hello"

    run_in_child(child)
    assert bytes(shm.buf[100:105]) == b"hello" and shm.buf[0] == 0


def test_sysv_opener_never_removes(sysv):
    """A process that only opened leaves the segment through close() and interpreter exit."""
    shm = sysv()
    shm.buf[0] = 5
    _run_python("from ipcraft.primitives.shm import SysVSharedMemory as S\n"
                f"s = S.open({shm.key}); assert s.buf[0] == 5 and not s.owner; s.close()\n")
    assert _sysv_exists(shm.key)
    with SysVSharedMemory.open(shm.key) as again:
        assert again.buf[0] == 5


def test_sysv_owner_removes_on_close():
    """close() of the creator's handle removes the segment: the key is free again."""
    key = unique_key()
    shm = SysVSharedMemory.create(key, 100)
    assert shm.owner and _sysv_exists(key)
    shm.close()
    assert not _sysv_exists(key)
    with pytest.raises(FileNotFoundError) as info:
        SysVSharedMemory.open(key)
    assert info.value.errno == errno.ENOENT


def test_sysv_create_existing_and_open_missing(sysv):
    """create() of a used key is FileExistsError; open() of an unused one FileNotFoundError; errno set."""
    shm = sysv()
    with pytest.raises(FileExistsError) as info:
        SysVSharedMemory.create(shm.key, 100)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FileNotFoundError) as info2:
        SysVSharedMemory.open(unique_key())
    assert info2.value.errno == errno.ENOENT and "System V shared memory key 0x" in str(info2.value)


def test_sysv_nobody_gets_permission_error(sysv):
    """Another user attaching a 0600 segment gets PermissionError (EACCES)."""
    shm = sysv(mode=0o600)

    def child() -> int:
        _as_nobody()
        try:
            SysVSharedMemory.open(shm.key, readonly=True)
        except PermissionError as exc:
            return exc.errno
        return 0

    assert run_in_child(child) == errno.EACCES


def test_sysv_numpy_shared_across_processes(sysv):
    """numpy arrays over one segment in two processes share memory."""
    shm = sysv(4 * 256)
    arr = shm.as_numpy(np.int32, (16, 16))
    arr[:] = 1

    def child() -> None:
        with SysVSharedMemory.open(shm.key) as other:
            a = other.as_numpy(np.int32)
            a += np.arange(256, dtype=np.int32)
            del a

    run_in_child(child)
    assert arr[15, 15] == 256 and int(arr.sum()) == 256 + 255 * 256 // 2
    del arr


def test_sysv_resize_is_impossible(sysv):
    """resize() raises NotImplementedError explaining that shmget fixes the size."""
    shm = sysv()
    with pytest.raises(NotImplementedError, match="fixes"):
        shm.resize(8192)
    assert shm.size == 4096


def test_sysv_detach_refused_while_views_live(sysv):
    """detach() with a live view raises BufferError; after release, detach and attach work."""
    shm = sysv()
    view = shm.buf[1:3]
    with pytest.raises(BufferError, match="1 memoryview"):
        shm.detach()
    assert shm.attached
    view.release()
    nattch = shm.number_attached
    shm.detach()
    assert not shm.attached and shm.number_attached == nattch - 1
    with pytest.raises(HandleClosed, match="detached"):
        shm.buf
    shm.attach()
    assert shm.attached and shm.number_attached == nattch


def test_sysv_close_with_live_view_detaches_when_released():
    """close() with a live view removes the key, keeps the memory attached, detaches on release."""
    shm = SysVSharedMemory.create(unique_key(), 4096)
    view = shm.buf
    shm.close()
    assert not _sysv_exists(shm.key)  # IPC_RMID: the key is gone at once
    view[0] = 1  # still attached: no crash
    with open("/proc/sysvipc/shm") as f:
        assert any(int(line.split()[1]) == shm.id for line in list(f)[1:])
    view.release()
    gc.collect()
    with open("/proc/sysvipc/shm") as f:  # the last detach destroyed it
        assert not any(int(line.split()[1]) == shm.id for line in list(f)[1:])


def test_sysv_readonly_views_cannot_write(sysv):
    """A read-only attachment hands out read-only views, so a write raises instead of crashing."""
    shm = sysv()
    with SysVSharedMemory.open(shm.key, readonly=True) as ro:
        assert ro.readonly and ro.buf.readonly
        with pytest.raises(TypeError):
            ro.buf[0] = 1
        assert not ro.as_numpy("u1").flags.writeable


@pytest.mark.parametrize("key", [0, -(1 << 31) - 1, 1 << 32, "abc", True, 1.0])
def test_sysv_bad_keys(key):
    """A key that is not a 32-bit int other than IPC_PRIVATE raises InvalidEndpoint."""
    with pytest.raises(InvalidEndpoint):
        SysVSharedMemory.create(key, 100)
    with pytest.raises(InvalidEndpoint):
        SysVSharedMemory.open(key)


def test_sysv_too_big_is_limit_exceeded():
    """A segment larger than the machine can hold is LimitExceeded naming the limit; nothing created."""
    key = unique_key()
    with pytest.raises(LimitExceeded) as info:
        SysVSharedMemory.create(key, 1 << 60)
    assert "/proc/" in str(info.value)
    assert not _sysv_exists(key)


def test_sysv_release_ownership_and_remove(sysv):
    """After release_ownership() close() leaves the segment; remove_sysv_shm() deletes it by key."""
    key = unique_key()
    shm = SysVSharedMemory.create(key, 100)
    shm.release_ownership()
    shm.close()
    assert _sysv_exists(key)
    remove_sysv_shm(key)
    assert not _sysv_exists(key)
    with pytest.raises(FileNotFoundError):
        remove_sysv_shm(key)


def test_sysv_open_or_create_and_repr():
    """open_or_create() creates once then opens; repr shows key, id, size and state."""
    key = unique_key()
    a = SysVSharedMemory.open_or_create(key, 4096)
    b = SysVSharedMemory.open_or_create(key, 1)
    try:
        assert a.owner and not b.owner and b.size == 4096 and a.id == b.id
        assert repr(a) == f"<SysVSharedMemory key={key:#010x} id={a.id} size=4096 owner>"
    finally:
        b.close()
        a.close()
    assert repr(a).endswith("closed>") and not _sysv_exists(key)


def test_forked_copy_of_the_owner_does_not_unlink(posix, sysv):
    """A forked child closing the owner handles it inherited removes neither segment."""
    p, s = posix(), sysv()

    def child() -> bool:
        owners = p.owner or s.owner
        p.close()
        s.close()
        return owners

    assert run_in_child(child) is False
    assert p.owner and s.owner and _exists(p.name) and _sysv_exists(s.key)


def test_sysv_errno_less_errors_are_translated():
    """sysv_ipc's errno-less ValueError/MemoryError/OSError become errno'd errors naming the knob."""
    from ipcraft._errors import translating_sysv

    limits = {errno.ENOSPC: "/proc/sys/kernel/shmmni", errno.ENOMEM: "RAM"}
    with pytest.raises(LimitExceeded, match="shmmni") as info:
        with translating_sysv("create x", limits=limits):
            raise OSError("Not enough shared memory identifiers available (ENOSPC)")
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(LimitExceeded, match="RAM"):
        with translating_sysv("create x", limits=limits):
            raise MemoryError("Not enough memory")
    with pytest.raises(OSError) as info2:
        with translating_sysv("attach x"):
            raise ValueError("Invalid id, address, or flags")
    assert info2.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="unrelated"):  # anything else passes through untouched
        with translating_sysv("x"):
            raise ValueError("unrelated")
