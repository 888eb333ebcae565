"""ipcraft.limits: the values are the kernel's, read now, each with the knob it comes from."""

from __future__ import annotations

import fcntl
import os
import resource
import socket

import pytest

from ipcraft import limits
from ipcraft.limits import Limit, get, get_limits
from ipcraft.testing import run_in_child

REQUIRED = (
    "PIPE_BUF", "pipe.default_capacity", "fs.pipe-max-size", "fs.pipe-user-pages-soft",
    "fs.mqueue.msg_max", "fs.mqueue.msgsize_max", "fs.mqueue.msg_default", "fs.mqueue.msgsize_default",
    "fs.mqueue.queues_max", "RLIMIT_MSGQUEUE", "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni",
    "kernel.sem.SEMMSL", "kernel.sem.SEMMNS", "kernel.sem.SEMOPM", "kernel.sem.SEMMNI", "kernel.shmmax",
    "kernel.shmall", "kernel.shmmni", "net.core.wmem_max", "net.core.rmem_max", "net.core.wmem_default",
    "net.core.rmem_default", "net.unix.max_dgram_qlen", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "shm.size",
    "shm.free", "UNIX_PATH_MAX",
)


def _proc(path: str) -> list[int]:
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def test_every_limit_that_bites_is_reported_once_with_source_and_meaning():
    """Each required limit appears exactly once, with a unit, a source and a one-line meaning."""
    found = get_limits()
    names = [lim.name for lim in found]
    assert sorted(names) == sorted(set(names))
    assert set(REQUIRED) <= set(names)
    for lim in found:
        assert isinstance(lim, Limit) and lim.unit and lim.source and lim.meaning and "\n" not in lim.meaning


@pytest.mark.parametrize(("name", "path", "index"), [
    ("fs.pipe-max-size", "/proc/sys/fs/pipe-max-size", 0),
    ("fs.mqueue.msgsize_max", "/proc/sys/fs/mqueue/msgsize_max", 0),
    ("fs.mqueue.queues_max", "/proc/sys/fs/mqueue/queues_max", 0),
    ("kernel.msgmnb", "/proc/sys/kernel/msgmnb", 0),
    ("kernel.sem.SEMMSL", "/proc/sys/kernel/sem", 0),
    ("kernel.sem.SEMOPM", "/proc/sys/kernel/sem", 2),
    ("kernel.sem.SEMMNI", "/proc/sys/kernel/sem", 3),
    ("kernel.shmmni", "/proc/sys/kernel/shmmni", 0),
    ("net.core.wmem_max", "/proc/sys/net/core/wmem_max", 0),
    ("net.unix.max_dgram_qlen", "/proc/sys/net/unix/max_dgram_qlen", 0),
])
def test_proc_knobs_are_the_kernels_values(name, path, index):
    """A /proc/sys limit carries the file's current value and names the file as its source."""
    lim = get(name)
    assert lim.value == _proc(path)[index]
    assert lim.source.startswith(path)


def test_rlimits_are_this_process_soft_and_hard_limits():
    """rlimits are getrlimit()'s soft value with the hard one beside it (None for unlimited)."""
    for name in ("RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE"):
        soft, hard = resource.getrlimit(getattr(resource, name))
        lim = get(name)
        inf = resource.RLIM_INFINITY
        assert (lim.value, lim.hard) == (None if soft == inf else soft, None if hard == inf else hard)


def _nofile_after_lowering() -> int | None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (123, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return get("RLIMIT_NOFILE").value


def test_limits_are_read_at_call_time():
    """A limit changed while the program runs is reported as it is now (never cached)."""
    get_limits()
    assert run_in_child(_nofile_after_lowering, timeout=20) == 123


def test_pipe_limits_match_what_a_pipe_does():
    """PIPE_BUF is 4096 on Linux; a new pipe holds the reported default capacity; pipe-max-size can be set."""
    assert get("PIPE_BUF").value == 4096
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        written = 0
        try:
            while True:
                written += os.write(w, b"x" * 4096)
        except BlockingIOError:
            pass
        assert written == get("pipe.default_capacity").value
        top = get("fs.pipe-max-size").value
        assert fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, top) == top
    finally:
        os.close(r)
        os.close(w)


def test_sun_path_limit_is_the_kernels():
    """An abstract name of UNIX_PATH_MAX bytes binds; one byte more does not fit sun_path."""
    n = get("UNIX_PATH_MAX").value
    assert n == 107
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(b"\0" + b"a" * (n - 30) + os.urandom(15).hex().encode())
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError, match="too long"):
        s.bind(b"\0" + b"b" * (n + 1))  # Python checks sizeof(sun_path) before the kernel would


def test_dev_shm_size_and_free_space_come_from_statvfs():
    """shm.size is the tmpfs size of /dev/shm; shm.free never exceeds it."""
    st = os.statvfs("/dev/shm")
    assert get("shm.size").value == st.f_blocks * st.f_frsize
    assert 0 <= get("shm.free").value <= get("shm.size").value


def test_unknown_limit_is_a_key_error_listing_the_names():
    """get() of a name this system lacks raises KeyError naming the valid limits."""
    with pytest.raises(KeyError, match="kernel.msgmnb"):
        get("kernel.no_such_knob")


def test_as_dict_is_json_ready():
    """as_dict() holds every field, with plain JSON types."""
    import json

    d = limits.get("RLIMIT_NOFILE").as_dict()
    assert set(d) == {"name", "value", "unit", "source", "meaning", "group", "hard"}
    assert json.loads(json.dumps(d)) == d
