"""The ipcraft command: ls/rm over real objects, limits, and send/recv/relay between real processes."""

from __future__ import annotations

import concurrent.futures
import json
import os
import select
import subprocess
import sys
import time

import pytest
import sysv_ipc
from click.testing import CliRunner

import ipcraft
from ipcraft._cli import cli
from ipcraft.inventory import list_objects
from ipcraft.testing import Child, run_in_child, unique_key, unique_name


def invoke(*args: str, input: bytes | str | None = None):  # noqa: A002 (CliRunner's own name)
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture()
def spawn():
    """Start ``python -m ipcraft ...`` in the background; killed at teardown if still running."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "ipcraft", *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def wait_listening(path: str, timeout: float = 15.0) -> None:
    """Wait until a socket listens at ``path`` (found through ipcraft.inventory)."""
    deadline = time.monotonic() + timeout
    while not [o for o in list_objects("unix_socket", find_pids=False)
               if o.name == path and o.details.get("state") == "listening"]:
        assert time.monotonic() < deadline, f"nobody listens on {path}"
        time.sleep(0.02)


def finish(p: subprocess.Popen, timeout: float = 20.0) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(), err.decode()


# -- ls / rm ---------------------------------------------------------------------------------------

def test_ls_shows_real_objects_in_both_formats_and_rm_removes_them():
    """A POSIX segment and a System V queue appear in ls (table and JSON) and vanish after rm."""
    name = unique_name("cli")
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
    key = unique_key()
    q = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=0o600)
    try:
        q.send(b"hello")
        table = invoke("ls")
        assert table.exit_code == 0
        assert f"/{name}" in table.stdout and f"{key:#010x}" in table.stdout
        rows = json.loads(invoke("ls", "--format", "json", "--kind", "posix-shm", "-k", "sysv_mq").stdout)
        mine = {r["name"] or r["key"]: r for r in rows}
        assert mine[f"/{name}"]["size"] == 4096 and mine[key]["messages"] == 1
        assert {r["kind"] for r in rows} <= {"posix_shm", "sysv_mq"}
        result = invoke("rm", "posix_shm", name)
        assert result.exit_code == 0 and "removed POSIX shared memory" in result.stdout
        assert invoke("rm", "sysv_mq", hex(key)).exit_code == 0
        after = invoke("ls", "--format", "json").stdout
        assert f"/{name}" not in after and not [o for o in list_objects("sysv_mq") if o.key == key]
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")
        try:
            q.remove()
        except sysv_ipc.ExistentialError:
            pass


def _make_as_nobody(name: str, key: int) -> None:
    os.setgid(65534)
    os.setuid(65534)
    os.close(os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=0o600)


def test_rm_refuses_other_users_objects_unless_forced():
    """rm will not remove another user's objects without --force, even as root; with it, it does."""
    name, key = unique_name("nob"), unique_key()
    run_in_child(_make_as_nobody, name, key, timeout=20)
    try:
        refused = invoke("rm", "posix-shm", name)
        assert refused.exit_code == 1 and "--force" in refused.stderr and "nobody" in refused.stderr
        assert os.path.exists(f"/dev/shm/{name}")
        assert invoke("rm", "sysv_sem", str(key)).exit_code == 1
        assert invoke("rm", "--force", "posix-shm", name).exit_code == 0
        assert invoke("rm", "-f", "sysv_sem", str(key)).exit_code == 0
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")
        try:
            sysv_ipc.remove_semaphore(sysv_ipc.Semaphore(key).id)
        except sysv_ipc.ExistentialError:
            pass


def test_ls_dir_lists_fifos_and_rm_removes_one(tmp_ipc_dir):
    """ls --dir shows the FIFOs in a directory; rm fifo PATH removes it."""
    path = os.path.join(tmp_ipc_dir, "pipe")
    os.mkfifo(path)
    rows = json.loads(invoke("ls", "-k", "fifo", "--dir", tmp_ipc_dir, "--format", "json").stdout)
    assert [r["path"] for r in rows] == [path]
    assert invoke("rm", "fifo", path).exit_code == 0 and not os.path.exists(path)


def _listen_briefly(url: str) -> None:
    with ipcraft.listen(url):
        time.sleep(1.5)


@pytest.mark.timeout(30)
def test_rm_socket_file_only_when_nobody_is_bound(tmp_ipc_dir, monkeypatch):
    """rm unix_socket refuses a live listener's file (EBUSY) and removes a stale one, by relative path."""
    import socket

    monkeypatch.chdir(tmp_ipc_dir)
    live = os.path.join(tmp_ipc_dir, "live.sock")
    child = Child(_listen_briefly, f"unix://{live}")
    try:
        wait_listening(live)
        busy = invoke("rm", "unix-socket", "live.sock")
        assert busy.exit_code == 1 and "still bound" in busy.stderr and os.path.exists(live)
    finally:
        child.result(20)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("stale.sock")
    assert invoke("rm", "unix_socket", "stale.sock").exit_code == 0
    assert not os.path.exists("stale.sock")


def test_bad_input_is_one_line_and_a_nonzero_status():
    """A missing object, a bad key or kind: a one-line error, status 1 or 2, no traceback."""
    missing = invoke("rm", "posix_shm", unique_name("missing"))
    assert missing.exit_code == 1 and "no such object" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.output
    bad_key = invoke("rm", "sysv_mq", "zzz")
    assert bad_key.exit_code == 1 and "0x4d2" in bad_key.stderr
    assert invoke("ls", "--kind", "nonsense").exit_code == 2
    assert invoke("ls", "--format", "yaml").exit_code == 2
    bad_url = invoke("send", "bogus://x", "hi")
    assert bad_url.exit_code == 1 and "valid schemes" in bad_url.stderr
    assert "Traceback" not in bad_url.output


def test_endpoint_prefix_must_fit_the_scheme():
    """listen: is for connection schemes and create: for queues; a mismatch says which to use."""
    wrong = invoke("recv", "listen:mq://jobs")
    assert wrong.exit_code == 2 and "create:mq://jobs" in wrong.stderr
    wrong = invoke("send", "create:unix:@x", "hi")
    assert wrong.exit_code == 2 and "listen:unix:@x" in wrong.stderr


# -- limits ----------------------------------------------------------------------------------------

def test_limits_shows_the_real_proc_values_in_both_formats():
    """limits prints the kernel's current values, as a table and as JSON."""
    with open("/proc/sys/kernel/msgmnb") as f:
        msgmnb = int(f.read())
    with open("/proc/sys/kernel/sem") as f:
        semopm = int(f.read().split()[2])
    rows = {r["name"]: r for r in json.loads(invoke("limits", "--format", "json").stdout)}
    assert rows["kernel.msgmnb"]["value"] == msgmnb and rows["kernel.sem.SEMOPM"]["value"] == semopm
    assert rows["kernel.msgmnb"]["source"] == "/proc/sys/kernel/msgmnb"
    table = invoke("limits", "-g", "sysv_mq")
    line = next(x for x in table.stdout.splitlines() if x.startswith("kernel.msgmnb "))
    assert str(msgmnb) in line.split() and "/proc/sys/kernel/msgmnb" in line
    assert "PIPE_BUF" not in table.stdout


# -- send / recv / relay -------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_send_args_and_stdin_lines_to_a_recv_listener_process(tmp_ipc_dir, spawn):
    """A background `ipcraft recv listen:...` prints what `ipcraft send` sends, one line each."""
    for scheme in ("unix", "unix+seqpacket"):
        path = os.path.join(tmp_ipc_dir, f"{scheme}.sock")
        p = spawn("recv", f"listen:{scheme}://{path}", "--timeout", "20")
        wait_listening(path)
        result = invoke("send", f"{scheme}://{path}", "--timeout", "10", input="first line\n\x01binary\n")
        assert result.exit_code == 0, result.output
        rc, out, err = finish(p)
        assert (rc, out) == (0, "first line\nb'\\x01binary'\n"), err
        assert not os.path.exists(path)  # the listener went after accepting its one peer

        p = spawn("recv", f"listen:{scheme}://{path}", "--count", "2", "--timeout", "20")
        wait_listening(path)
        assert invoke("send", f"{scheme}://{path}", "a b", "ç").exit_code == 0
        assert finish(p)[:2] == (0, "a b\nç\n")


def _serve_objects(url: str) -> None:
    with ipcraft.listen(url) as listener, listener.accept(timeout=15) as ch:
        ch.send_bytes(b"plain text")
        ch.send({"k": [1, 2]})
        ch.send_bytes(b"\x00\xff")
        ch.send("tab\there")


@pytest.mark.timeout(60)
def test_recv_prints_bytes_safely_and_objects_as_json(tmp_ipc_dir):
    """recv prints text as is, other bytes as a bytes literal, objects as JSON, until the peer closes."""
    path = os.path.join(tmp_ipc_dir, "objs.sock")
    child = Child(_serve_objects, f"unix://{path}")
    wait_listening(path)
    result = invoke("recv", f"unix://{path}", "--timeout", "10")
    child.result(20)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["plain text", '{"k": [1, 2]}', "b'\\x00\\xff'", "tab\there"]


def _serve_silence(url: str, seconds: float) -> None:
    with ipcraft.listen(url) as listener, listener.accept(timeout=15):
        time.sleep(seconds)


@pytest.mark.timeout(60)
def test_recv_timeout_ends_quietly_without_count_and_fails_with_count(tmp_ipc_dir):
    """--timeout with nothing arriving: status 0 without --count, 1 (saying so) with --count."""
    path = os.path.join(tmp_ipc_dir, "quiet.sock")
    for args, status in (((), 0), (("--count", "1"), 1)):
        child = Child(_serve_silence, f"unix+seqpacket://{path}", 1.5)
        wait_listening(path)
        result = invoke("recv", f"unix+seqpacket://{path}", "--timeout", "0.2", *args)
        child.result(20)
        assert result.exit_code == status and result.stdout == ""
        if status:
            assert "timed out after 0.2 s with 0 of 1 messages" in result.stderr


@pytest.mark.timeout(60)
def test_raw_bytes_travel_unchanged(tmp_ipc_dir, spawn):
    """send --raw from stdin to recv --raw: every byte value arrives unchanged."""
    path = os.path.join(tmp_ipc_dir, "raw.sock")
    data = bytes(range(256)) * 1000
    p = spawn("recv", "--raw", f"listen:unix://{path}", "--timeout", "20")
    wait_listening(path)
    # send returns once recv has read everything, and recv prints it all into our pipe: read meanwhile.
    reader = concurrent.futures.ThreadPoolExecutor(1).submit(p.communicate, timeout=20)
    assert invoke("send", "--raw", "--chunk", "10000", f"unix://{path}", input=data).exit_code == 0
    out, err = reader.result(timeout=25)
    assert p.returncode == 0 and out == data, err


@pytest.mark.timeout(60)
def test_send_json_sends_objects(tmp_ipc_dir):
    """send --json sends the objects the JSON describes; a receiver's recv() gets them decoded."""
    path = os.path.join(tmp_ipc_dir, "json.sock")
    with ipcraft.listen(f"unix://{path}") as listener:
        child = Child(lambda: invoke("send", "--json", f"unix://{path}", '{"a": 1}', "[true, null]").exit_code)
        with listener.accept(timeout=15) as ch:
            assert [ch.recv(timeout=10), ch.recv(timeout=10)] == [{"a": 1}, [True, None]]
        assert child.result(20) == 0
    bad = invoke("send", "--json", f"unix://{path}", "{nope")
    assert bad.exit_code == 1  # nobody listens any more: a clean error either way


@pytest.mark.timeout(60)
def test_relay_moves_messages_both_ways_until_one_side_closes(tmp_ipc_dir, spawn):
    """relay listen:A listen:B carries messages A->B and B->A, and ends when A's peer closes."""
    a = os.path.join(tmp_ipc_dir, "a.sock")
    b = os.path.join(tmp_ipc_dir, "b.sock")
    p = spawn("relay", f"listen:unix://{a}", f"listen:unix+seqpacket://{b}", "--timeout", "20")
    wait_listening(a)
    with ipcraft.connect(f"unix://{a}", timeout=10) as ca:
        wait_listening(b)
        with ipcraft.connect(f"unix+seqpacket://{b}", timeout=10) as cb:
            ca.send_bytes(b"ping")
            ca.send({"n": 1})
            assert cb.recv(timeout=10) == b"ping"
            assert cb.recv(timeout=10) == {"n": 1}
            cb.send_bytes(b"pong")
            assert ca.recv(timeout=10) == b"pong"
            ca.close()
            with pytest.raises(ipcraft.ChannelClosed):
                cb.recv(timeout=10)
    rc, _out, err = finish(p)
    assert rc == 0, err


def test_import_ipcraft_loads_neither_click_nor_rich():
    """The library, inventory and limits included, costs nothing of the command line."""
    code = ("import sys, ipcraft, ipcraft.inventory, ipcraft.limits; "
            "print(sorted(m for m in ('click', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]", out.stderr


def test_python_dash_m_ipcraft_ls_runs_as_a_real_process():
    """`python -m ipcraft ls --format json` works as a separate process and prints a JSON list."""
    out = subprocess.run([sys.executable, "-m", "ipcraft", "ls", "--format", "json", "--no-pids"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), list)


def _accept_and_drop_unread(url: str, linger: float) -> None:
    """Accept one peer, wait until its data is there, and close without reading it (after ``linger``)."""
    with ipcraft.listen(url) as listener, listener.accept(timeout=15) as ch:
        assert select.select([ch.fileno()], [], [], 10)[0]  # the kernel's readiness: nothing read
        time.sleep(linger)


@pytest.mark.timeout(60)
def test_send_whose_messages_the_peer_never_read_exits_nonzero(tmp_ipc_dir):
    """A peer that closes with the messages unread: they are lost, and send says so with status 1."""
    for scheme in ("unix", "unix+seqpacket"):
        path = os.path.join(tmp_ipc_dir, f"drop-{scheme}.sock")
        child = Child(_accept_and_drop_unread, f"{scheme}://{path}", 0.0)
        wait_listening(path)
        # One message: the peer closes only once it is in its socket, so send is past sending by then.
        result = invoke("send", f"{scheme}://{path}", "--timeout", "10", "lost")
        child.result(20)
        assert result.exit_code == 1, result.output
        assert "before reading everything" in result.stderr and "lost" in result.stderr


@pytest.mark.timeout(60)
def test_send_to_a_peer_that_does_not_read_in_time_exits_nonzero(tmp_ipc_dir):
    """--timeout bounds the wait for the peer to read: past it, status 1 naming the unread bytes."""
    path = os.path.join(tmp_ipc_dir, "slow.sock")
    child = Child(_accept_and_drop_unread, f"unix://{path}", 3.0)
    wait_listening(path)
    t0 = time.monotonic()
    result = invoke("send", f"unix://{path}", "--timeout", "0.5", "unread")
    assert time.monotonic() - t0 < 2.5
    child.result(20)
    assert result.exit_code == 1 and "has not read the last" in result.stderr, result.output


@pytest.mark.timeout(60)
def test_relay_to_a_missing_peer_fails_before_it_listens(tmp_ipc_dir):
    """relay listen:A shm://nobody opens shm:// first: it fails at once and never binds A."""
    path = os.path.join(tmp_ipc_dir, "in.sock")
    result = invoke("relay", f"listen:unix://{path}", f"shm://{unique_name('nobody')}", "--timeout", "5")
    assert result.exit_code == 1 and "no listener" in result.stderr, result.output
    assert not os.path.exists(path)
