"""ipcraft tour: every step runs between real processes, and what it narrates is what happened.

Each step of the tour is checked here on the facts it measured (not on its prose): the kernel's
pipe capacity, a writer that really slept, ENXIO, the order of System V messages fetched by type,
a waiter asleep in the kernel, identical bytes seen by several readers, the pid F_GETLK names, a
payload that crossed.  The lower bounds on sleeping times are the tour's own hold time (a sleep
cannot be shorter than the time nobody woke it), never speed targets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ipcraft import _tour
from ipcraft._cli import cli

HOLD = _tour.HOLD


def _sysv_ids(kind: str) -> set[int]:
    with open(f"/proc/sysvipc/{kind}") as f:
        next(f)
        return {int(line.split()[1]) for line in f}


@pytest.mark.timeout(60)
def test_pipe_writer_sleeps_on_a_full_pipe_until_the_reader_drains_it():
    r, w = os.pipe()
    try:
        kernel_capacity = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)
    step = _tour.run("pipe")
    f = step.facts
    assert f["capacity"] == kernel_capacity == f["filled"]
    assert f["writer_slept"] >= HOLD * 0.9
    assert f["received"] == f["capacity"] + 1


@pytest.mark.timeout(60)
def test_fifo_nonblocking_open_fails_with_enxio_and_a_blocking_one_waits():
    step = _tour.run("fifo")
    assert step.facts["nonblocking_errno"] == errno.ENXIO
    assert step.facts["open_slept"] >= HOLD * 0.9
    assert step.facts["fifo_data"] == "hello through a name"
    path = next(e.text for e in step.events if "made the FIFO" in e.text).split()[3]
    assert not os.path.exists(os.path.dirname(path))


@pytest.mark.timeout(60)
def test_sysv_messages_are_fetched_by_type_and_by_negative_type():
    before = _sysv_ids("msg")
    step = _tour.run("sysvmq")
    assert step.facts["order"] == [["normal", 2], ["urgent", 1], ["report", 3]]
    assert _sysv_ids("msg") <= before  # the queue was removed


@pytest.mark.timeout(60)
def test_semaphore_waiter_sleeps_in_the_kernel_until_posted():
    before = _sysv_ids("sem")
    step = _tour.run("semaphore")
    f = step.facts
    assert f["sleepers"] == 1 and f["waiter_state"] == "S"
    assert f["waiter_slept"] >= HOLD * 0.9
    assert f["woke_at"] >= f["posted_at"] and f["wake_latency"] >= 0
    assert _sysv_ids("sem") <= before


@pytest.mark.timeout(60)
def test_shared_memory_is_read_by_several_processes_and_consumed_by_none():
    step = _tour.run("shm")
    f = step.facts
    assert [f[f"crc_{i}"] for i in range(3)] == [f["expected_crc"]] * 3
    assert f["intact"] is True
    pids = {e.who for e in step.events if e.who.startswith("reader")}
    assert pids == {"reader 0", "reader 1", "reader 2"}
    assert not os.path.exists("/dev/shm" + f["shm_name"])


@pytest.mark.timeout(60)
def test_the_kernel_releases_a_killed_holders_lock():
    step = _tour.run("lock")
    f = step.facts
    assert f["holder_pid"] == f["holder_child"] and f["refused"] is True
    assert f["freed_after"] >= 0


@pytest.mark.timeout(60)
def test_a_real_time_signal_carries_its_payload_and_its_sender():
    step = _tour.run("signal")
    f = step.facts
    assert f["signo"] == signal.SIGRTMIN and f["value"] == 424242
    assert f["sender_pid"] == f["sender_child"] and f["code"] == -1  # SI_QUEUE
    assert f["latency"] >= 0
    assert signal.SIGRTMIN not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the mask is restored


@pytest.mark.timeout(120)
def test_tour_command_runs_every_mechanism_in_plain_text_when_not_a_terminal():
    """`ipcraft tour` piped: every step, narrated with times, and no terminal escape codes."""
    proc = subprocess.run([sys.executable, "-m", "ipcraft", "tour"], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout
    for i, name in enumerate(_tour.STEPS, 1):
        assert f"{i}/{len(_tour.STEPS)} " in proc.stdout, name
    assert "ENXIO" in proc.stdout and "capacity is" in proc.stdout and "payload 424242" in proc.stdout
    assert " ms  " in proc.stdout


@pytest.mark.timeout(60)
def test_tour_of_one_mechanism_and_an_unknown_one():
    result = CliRunner().invoke(cli, ["tour", "sysvmq"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1/1 System V message queue")
    bad = CliRunner().invoke(cli, ["tour", "carrier-pigeon"])
    assert bad.exit_code == 2 and "'pipe'" in bad.output and "'signal'" in bad.output


@pytest.mark.timeout(60)
def test_tour_on_a_terminal_is_rich():
    """Under a pseudo-terminal the same step is drawn with colours in a panel."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "ipcraft", "tour", "sysvmq"])
    out = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    text = out.decode()
    assert "\x1b[" in text and "╭" in text and "msgrcv(type=-3)" in text


@pytest.mark.timeout(60)
def test_posix_messages_come_out_highest_priority_first():
    step = _tour.run("mq")
    assert step.facts["order"] == [["high", 9], ["middle", 5], ["low", 1]]
    assert not os.path.exists("/dev/mqueue" + step.facts["mq_name"])


@pytest.mark.timeout(60)
def test_unix_stream_merges_writes_seqpacket_keeps_them_and_peercred_names_the_writer():
    step = _tour.run("unix")
    assert step.facts["reads"] == {"stream": ["firstsecond"], "seqpacket": ["first", "second"]}
    assert step.facts["peer_pid"] == step.facts["writer_pid"] != os.getpid()


@pytest.mark.timeout(60)
def test_eventfd_coalesces_posts_in_counter_mode_and_not_in_semaphore_mode():
    step = _tour.run("eventfd")
    assert step.facts["taken"] == {"counter mode": [3], "semaphore mode": [1, 1, 1]}


@pytest.mark.timeout(60)
def test_a_robust_mutex_reports_its_dead_owner_instead_of_deadlocking():
    step = _tour.run("mutex")
    assert step.facts["held_by_owner"] is True and step.facts["owner_died"] is True


@pytest.mark.timeout(60)
def test_a_step_that_fails_leaves_no_process_behind(monkeypatch):
    """A step that raises with a child still running: run() kills and reaps the child, and says why."""
    started: list[int] = []

    def broken() -> _tour.Step:
        rec = _tour._Recorder().start()
        started.append(rec.fork("sleeper", lambda: __import__("time").sleep(30)))
        raise OSError(errno.EIO, "the step broke halfway")

    monkeypatch.setitem(_tour.STEPS, "broken", broken)
    with pytest.raises(OSError, match="broke halfway"):
        _tour.run("broken")
    (pid,) = started
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped
    assert _tour._LIVE == []
