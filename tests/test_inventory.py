"""ipcraft.inventory: real IPC objects of every kind appear in list_objects() and go with remove()."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time

import posix_ipc
import pytest
import sysv_ipc

import ipcraft
from ipcraft import inventory
from ipcraft._unix_diag import proc_net_unix, unix_sockets
from ipcraft.inventory import IPCObject, list_objects, lookup, remove
from ipcraft.testing import Child, run_in_child, unique_key, unique_name


def _as_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


def _find(kind: str, **fields: object) -> list[IPCObject]:
    return [o for o in list_objects(kind) if all(getattr(o, k) == v for k, v in fields.items())]


@pytest.fixture()
def shm_file():
    """A POSIX shared memory segment made the way glibc's shm_open makes one."""
    name = unique_name("inv")
    path = f"/dev/shm/{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
    os.ftruncate(fd, 12345)
    os.close(fd)
    yield name
    if os.path.exists(path):
        os.unlink(path)


def test_posix_shm_listed_with_size_owner_mode_and_removed(shm_file):
    """A /dev/shm file is a posix_shm object with its size, owner and mode; remove() unlinks it."""
    [obj] = _find("posix_shm", name="/" + shm_file)
    assert (obj.size, obj.uid, obj.mode, obj.path) == (12345, os.geteuid(), 0o640, f"/dev/shm/{shm_file}")
    assert lookup("posix_shm", shm_file) == obj
    assert pickle.loads(pickle.dumps(obj)) == obj and pickle.loads(pickle.dumps(obj)).details == obj.details
    remove(obj)
    assert not _find("posix_shm", name="/" + shm_file)
    with pytest.raises(FileNotFoundError):
        remove(obj)


def test_posix_semaphore_listed_with_value_and_removed():
    """A named semaphore (/dev/shm/sem.NAME) is a posix_sem with its value, not shared memory."""
    name = "/" + unique_name("sem")
    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, initial_value=3)
    try:
        [obj] = _find("posix_sem", name=name)
        assert obj.details["value"] == 3 and obj.uid == os.geteuid()
        assert not _find("posix_shm", name="/sem." + name[1:])
        remove(obj)
        assert not _find("posix_sem", name=name)
    finally:
        sem.close()
        if os.path.exists(f"/dev/shm/sem.{name[1:]}"):
            posix_ipc.unlink_semaphore(name)


def test_sysv_queue_listed_with_messages_bytes_and_sender():
    """A System V queue shows its key, id, queued messages and bytes, and the last sender's pid."""
    key = unique_key()
    q = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=0o600)
    try:
        q.send(b"x" * 100)
        q.send(b"y" * 20)
        [obj] = _find("sysv_mq", key=key)
        assert (obj.id, obj.messages, obj.size, obj.mode) == (q.id, 2, 120, 0o600)
        assert obj.details["lspid"] == os.getpid()
        assert lookup("sysv_mq", hex(key)) == obj and lookup("sysv_mq", str(q.id), by_id=True) == obj
        remove(obj)
        assert not _find("sysv_mq", key=key)
        with pytest.raises(FileNotFoundError):
            remove(obj)  # the id is checked against the key: never removes a newcomer
    finally:
        try:
            q.remove()
        except sysv_ipc.ExistentialError:
            pass


def test_sysv_semaphore_set_and_shared_memory_listed_and_removed():
    """System V semaphore sets (nsems) and segments (size, creator pid, nattch) are listed and removed."""
    sem = sysv_ipc.Semaphore(unique_key(), sysv_ipc.IPC_CREX, mode=0o600)
    shm = sysv_ipc.SharedMemory(unique_key(), sysv_ipc.IPC_CREX, mode=0o600, size=8192)
    try:
        [s] = _find("sysv_sem", id=sem.id)
        assert s.details["nsems"] == 1 and s.key == sem.key
        [m] = _find("sysv_shm", id=shm.id)
        assert (m.size, m.pid, m.details["nattch"]) == (8192, os.getpid(), 1)
        shm.detach()
        remove(s)
        remove(m)
        assert not _find("sysv_sem", id=sem.id) and not _find("sysv_shm", id=shm.id)
    finally:
        for rm in (sem.remove, shm.remove):
            try:
                rm()
            except (sysv_ipc.ExistentialError, sysv_ipc.NotAttachedError):
                pass


def _serve(url: str, seconds: float) -> None:
    with ipcraft.listen(url):
        time.sleep(seconds)


def _wait_listening(name: str, timeout: float = 10.0) -> IPCObject:
    deadline = time.monotonic() + timeout
    while True:
        found = [o for o in list_objects("unix_socket") if o.name == name
                 and o.details.get("state") == "listening"]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"nobody listens on {name}"
        time.sleep(0.02)


@pytest.mark.timeout(30)
def test_listening_socket_found_by_its_file_with_owner_pid(tmp_ipc_dir):
    """A listener bound through a temporary name is listed under its real path, with its pid."""
    path = os.path.join(tmp_ipc_dir, "s.sock")
    child = Child(_serve, f"unix://{path}", 1.5)
    try:
        obj = _wait_listening(path)
        assert obj.path == path and obj.pid == child.pid and obj.uid == os.geteuid()
        assert obj.details["type"] == "stream" and obj.mode == 0o600
        with pytest.raises(OSError) as err:
            remove(lookup("unix_socket", path))
        assert err.value.errno == errno.EBUSY and os.path.exists(path)
    finally:
        child.result(10)


@pytest.mark.timeout(30)
def test_abstract_socket_listed_and_not_removable():
    """An abstract name is listed as @name; remove() refuses with EBUSY (it has no file)."""
    name = "@" + unique_name("abs")
    child = Child(_serve, f"unix+seqpacket:{name}", 1.5)
    try:
        obj = _wait_listening(name)
        assert obj.details["type"] == "seqpacket" and obj.path is None and obj.pid == child.pid
        with pytest.raises(OSError) as err:
            remove(obj)
        assert err.value.errno == errno.EBUSY
    finally:
        child.result(10)


def test_stale_socket_file_listed_in_dirs_and_removed(tmp_ipc_dir):
    """A socket file nobody is bound to any more is listed as stale (with dirs=) and removable."""
    path = os.path.join(tmp_ipc_dir, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    assert not [o for o in list_objects("unix_socket") if o.name == path]
    [obj] = [o for o in list_objects("unix_socket", dirs=[tmp_ipc_dir]) if o.name == path]
    assert obj.details["state"] == "stale"
    remove(lookup("unix_socket", path))
    assert not os.path.exists(path)


def test_fifos_listed_only_in_given_directories(tmp_ipc_dir):
    """FIFOs are listed from the directories given (no machine-wide table exists) and removed."""
    path = os.path.join(tmp_ipc_dir, "f")
    os.mkfifo(path)
    os.chmod(path, 0o620)
    assert not list_objects("fifo")
    [obj] = list_objects("fifo", dirs=[tmp_ipc_dir])
    assert (obj.name, obj.mode, obj.uid) == (path, 0o620, os.geteuid())
    remove(obj)
    assert not os.path.exists(path)


def test_proc_net_unix_fallback_sees_listeners():
    """Without sock_diag, /proc/net/unix still gives each socket's inode, type, state and name."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    name = unique_name("pnu")
    s.bind("\0" + name)
    s.listen()
    try:
        inode = os.fstat(s.fileno()).st_ino
        [info] = [i for i in proc_net_unix() if i.inode == inode]
        assert (info.type, info.state, info.bound_as) == ("seqpacket", "listening", "@" + name)
        [diag] = [i for i in unix_sockets() if i.inode == inode]
        assert (diag.type, diag.state, diag.bound_as, diag.uid) == ("seqpacket", "listening", "@" + name,
                                                                     os.geteuid())
    finally:
        s.close()


def _remove_as_nobody(obj: IPCObject) -> int | None:
    _as_nobody()
    try:
        remove(obj)
    except PermissionError as exc:
        return exc.errno
    return None


@pytest.mark.timeout(30)
def test_another_users_removal_is_a_permission_error_with_errno(shm_file):
    """Removing root's objects as nobody raises PermissionError with errno, leaving them in place."""
    key = unique_key()
    q = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=0o644)
    try:
        assert run_in_child(_remove_as_nobody, lookup("posix_shm", shm_file), timeout=20) in (
            errno.EPERM, errno.EACCES)
        assert run_in_child(_remove_as_nobody, lookup("sysv_mq", key), timeout=20) in (errno.EPERM, errno.EACCES)
        assert os.path.exists(f"/dev/shm/{shm_file}") and _find("sysv_mq", key=key)
    finally:
        q.remove()


def _create_shm_as_nobody(name: str) -> None:
    _as_nobody()
    os.close(os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))


def test_owner_of_another_users_object_is_reported():
    """An object a nobody process created is listed with uid 65534."""
    name = unique_name("nob")
    run_in_child(_create_shm_as_nobody, name, timeout=20)
    try:
        assert lookup("posix_shm", name).uid == 65534
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_bad_kind_and_missing_object_are_typed_errors():
    """An unknown kind is a ValueError naming the kinds; a missing object is FileNotFoundError."""
    with pytest.raises(ValueError, match="posix_shm"):
        list_objects("nonsense")
    with pytest.raises(FileNotFoundError):
        lookup("posix_shm", unique_name("missing"))
    with pytest.raises(FileNotFoundError):
        lookup("sysv_sem", unique_key())
    with pytest.raises(ValueError, match="0x4d2"):
        lookup("sysv_mq", "not-a-key")


def test_posix_queue_found_and_removed_without_an_mqueue_mount():
    """lookup() and remove() of a POSIX queue work whether or not the mqueue filesystem is mounted."""
    name = "/" + unique_name("mq")
    q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=4, max_message_size=64)
    try:
        q.send(b"hello")
        obj = lookup("posix_mq", name)
        assert (obj.messages, obj.details["maxmsg"], obj.details["msgsize"]) == (1, 4, 64)
        remove(obj)
        with pytest.raises(FileNotFoundError):
            lookup("posix_mq", name)
    finally:
        q.close()
        try:
            posix_ipc.unlink_message_queue(name)
        except posix_ipc.ExistentialError:
            pass


@pytest.mark.skipif(inventory.mqueue_dir() is not None, reason="an mqueue filesystem is mounted here")
def test_unmounted_mqueue_is_reported_not_hidden():
    """Without an mqueue mount, listing posix_mq raises, and listing everything warns."""
    with pytest.raises(FileNotFoundError, match="mount -t mqueue"):
        list_objects("posix_mq")
    with pytest.warns(RuntimeWarning, match="mqueue"):
        list_objects()


_MQ_SCRIPT = """
import os, posix_ipc, json
from ipcraft.inventory import list_objects, remove
name = {name!r}
q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=5, max_message_size=100)
q.send(b"abc")
q.send(b"defgh")
[obj] = [o for o in list_objects("posix_mq") if o.name == name]
remove(obj)
q.close()
print(json.dumps([obj.as_dict(), [o.name for o in list_objects("posix_mq")]]))
"""


@pytest.mark.timeout(30)
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_posix_queue_listed_from_the_mqueue_filesystem(tmp_ipc_dir):
    """With mqueue mounted (here in a private mount namespace), queues show QSIZE and message counts."""
    import json

    name = "/" + unique_name("mqm")
    script = _MQ_SCRIPT.format(name=name)
    cmd = ["unshare", "-m", "sh", "-c", 'mount -t mqueue none "$0" && exec "$1" -c "$2"',
           tmp_ipc_dir, sys.executable, script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if proc.returncode and "mount" in proc.stderr and "permission" in proc.stderr.lower():
        pytest.skip("cannot mount an mqueue filesystem here")
    assert proc.returncode == 0, proc.stderr
    obj, names_after = json.loads(proc.stdout)
    assert obj["size"] == 8 and obj["messages"] == 2 and obj["details"]["maxmsg"] == 5
    # The first mqueue mount wins: the machine's /dev/mqueue if it has one, else the private mount.
    assert os.path.basename(obj["path"]) == name[1:] and obj["mode"] == 0o600
    assert name not in names_after
