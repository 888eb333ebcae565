"""MappedFile against real files, across real processes."""

from __future__ import annotations

import errno
import io
import os
import resource

import numpy as np
import pytest

from ipcraft.errors import HandleClosed, InvalidEndpoint, LimitExceeded
from ipcraft.primitives.mmap_file import MappedFile
from ipcraft.testing import run_in_child


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture()
def path(tmp_ipc_dir):
    return os.path.join(tmp_ipc_dir, "table")


def test_child_writes_parent_reads(path):
    """Bytes a child writes through its own mapping are read through the parent's."""
    with MappedFile.create(path, 8192) as mf:
        def child() -> None:
            with MappedFile.open(path) as other:
                other.buf[5000:5003] = b"abc"

        run_in_child(child)
        assert bytes(mf.buf[5000:5003]) == b"abc" and mf.buf[0] == 0


def test_flush_is_visible_after_reopen(path):
    """Bytes written then flushed (whole, a range, sync or async) are in the file after reopening."""
    mf = MappedFile.create(path, 3 * 4096)
    mf.buf[:5] = b"first"
    mf.flush()
    mf.buf[5000:5006] = b"second"
    mf.flush(5000, 6)  # an unaligned range is widened to whole pages
    mf.buf[-4:] = b"last"
    mf.flush(sync=False)
    mf.close()
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == 3 * 4096
    assert data[:5] == b"first" and data[5000:5006] == b"second" and data[-4:] == b"last"
    with MappedFile.open(path, readonly=True) as again:
        assert bytes(again.buf[5000:5006]) == b"second"
        again.flush()  # msync of a read-only mapping is allowed and does nothing


def test_flush_range_outside_mapping(path):
    """flush() of a range leaving the mapping raises ValueError naming the mapping's size."""
    with MappedFile.create(path, 100) as mf:
        with pytest.raises(ValueError, match="100 bytes"):
            mf.flush(50, 51)
        with pytest.raises(ValueError):
            mf.flush(-1)


def test_resize_grow_and_shrink(path):
    """resize() changes the file's length and the mapping, keeping the bytes that remain."""
    with MappedFile.create(path, 100) as mf:
        mf.buf[:4] = b"data"
        mf.resize(10000)
        assert mf.size == 10000 and os.path.getsize(path) == 10000
        mf.buf[9999] = 1
        mf.resize(50)
        assert mf.size == 50 and os.path.getsize(path) == 50 and bytes(mf.buf[:4]) == b"data"


def test_remap_follows_another_process(path):
    """After a child grows the file, remap() maps the new length and shows the child's bytes."""
    with MappedFile.create(path, 4096) as mf:
        def child() -> None:
            with MappedFile.open(path) as other:
                other.resize(8192)
                other.buf[8000:8002] = b"hi"

        run_in_child(child)
        assert mf.size == 4096
        mf.remap()
        assert mf.size == 8192 and bytes(mf.buf[8000:8002]) == b"hi"


def test_resize_refused_while_views_live(path):
    """resize() with a live view or array raises BufferError and leaves file and mapping unchanged."""
    with MappedFile.create(path, 4096) as mf:
        arr = mf.as_numpy(np.uint8, (64, 64))
        with pytest.raises(BufferError):
            mf.resize(100)
        assert mf.size == 4096 and os.path.getsize(path) == 4096
        arr[0, 0] = 3
        del arr
        mf.resize(100)
        assert mf.buf[0] == 3


def test_readonly(path):
    """A read-only mapping has read-only views and arrays and refuses resize()."""
    MappedFile.create(path, 100).close()
    with MappedFile.open(path, readonly=True) as ro:
        assert ro.readonly and ro.buf.readonly and not ro.as_numpy("u1").flags.writeable
        with pytest.raises(io.UnsupportedOperation):
            ro.resize(200)
        assert os.path.getsize(path) == 100


def test_numpy_shared_across_processes(path):
    """numpy arrays over one file in two processes share memory."""
    with MappedFile.create(path, 8 * 64) as mf:
        arr = mf.as_numpy(np.float64, (8, 8))

        def child() -> None:
            with MappedFile.open(path) as other:
                a = other.as_numpy(np.float64, (8, 8))
                a[:] = np.eye(8)
                del a

        run_in_child(child)
        assert arr.trace() == 8.0
        del arr


def test_missing_existing_and_empty(path):
    """open() of a missing file is FileNotFoundError; create() of an existing one FileExistsError;
    open() of an empty file ValueError, leaving no descriptor open."""
    with pytest.raises(FileNotFoundError) as info:
        MappedFile.open(path)
    assert info.value.errno == errno.ENOENT
    open(path, "wb").close()
    with pytest.raises(FileExistsError) as info2:
        MappedFile.create(path, 10)
    assert info2.value.errno == errno.EEXIST
    before = _open_fds()
    with pytest.raises(ValueError, match="empty"):
        MappedFile.open(path)
    assert _open_fds() == before


def test_nobody_gets_permission_error(tmp_ipc_dir):
    """Another user opening a 0600 file gets PermissionError (EACCES)."""
    os.chmod(tmp_ipc_dir, 0o755)
    path = os.path.join(tmp_ipc_dir, "private")
    MappedFile.create(path, 100, mode=0o600).close()

    def child() -> int:
        os.setgid(65534)
        os.setuid(65534)
        try:
            MappedFile.open(path, readonly=True)
        except PermissionError as exc:
            return exc.errno
        return 0

    assert run_in_child(child) == errno.EACCES


def test_file_size_limit_is_limit_exceeded(path):
    """create() beyond RLIMIT_FSIZE is LimitExceeded naming the rlimit, and leaves no file behind."""
    def child() -> str:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            MappedFile.create(path, 1 << 20)
        except LimitExceeded as exc:
            return f"{exc.errno} {exc} {os.path.exists(path)}"
        return "no error"

    out = run_in_child(child)
    assert out.startswith(f"{errno.EFBIG} ") and "RLIMIT_FSIZE" in out and out.endswith("False")


def test_lifecycle(path):
    """close() is idempotent, views outlive it, and every later use raises HandleClosed."""
    mf = MappedFile.create(path, 100)
    view = mf.buf
    assert repr(mf) == f"<MappedFile {path!r} size=100>"
    mf.close()
    mf.close()
    view[0] = 1  # still mapped until released
    view.release()
    assert mf.closed and repr(mf).endswith("closed>") and os.path.exists(path)  # durable
    for op in (lambda: mf.buf, lambda: mf.flush(), lambda: mf.resize(5), mf.fileno):
        with pytest.raises(HandleClosed):
            op()


def test_bad_arguments(path):
    """An empty path or one with NUL is InvalidEndpoint; a size below 1 byte is ValueError."""
    for bad in ("", "a\0b"):
        with pytest.raises(InvalidEndpoint):
            MappedFile.open(bad)
    with pytest.raises(ValueError, match="at least 1 byte"):
        MappedFile.create(path, 0)
    assert not os.path.exists(path)


def test_open_or_create(path):
    """open_or_create() creates when missing and opens, at the file's own length, when present."""
    with MappedFile.open_or_create(path, 300) as a, MappedFile.open_or_create(path, 5) as b:
        assert a.size == b.size == 300


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "O_CREAT"])
def test_create_both_ways(path, monkeypatch, tmpfile):
    """create() gives the same file with and without O_TMPFILE, and a failed create leaves no file."""
    from ipcraft.primitives import _mapping

    monkeypatch.setattr(_mapping, "_TMPFILE_OK", tmpfile)
    with MappedFile.create(path, 5000, mode=0o640) as mf:
        assert mf.size == 5000
    st = os.stat(path)
    assert st.st_size == 5000 and st.st_mode & 0o777 == 0o640
    os.unlink(path)

    def child() -> bool:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        with pytest.raises(LimitExceeded):
            MappedFile.create(path, 1 << 20)
        return os.path.exists(path)

    assert run_in_child(child) is False
