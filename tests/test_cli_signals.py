"""The send/recv/relay commands stopped by SIGTERM, SIGHUP or SIGINT remove what they created.

``timeout``, systemd and container runtimes stop a process with SIGTERM; a closed terminal sends
SIGHUP.  Real ``python -m ipcraft`` processes, real queues and sockets, checked from outside.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ipcraft.primitives.posix_mq import PosixMessageQueue
from ipcraft.testing import unique_name


def _mq_exists(name: str) -> bool:
    try:
        PosixMessageQueue.open("/" + name).close()
    except FileNotFoundError:
        return False
    return True


def _remove_mq(name: str) -> None:
    try:
        q = PosixMessageQueue.open("/" + name)
    except FileNotFoundError:
        return
    q.unlink()
    q.close()


def _wait_for(check, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ipcraft", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(p: subprocess.Popen[bytes], sig: int) -> tuple[int, str]:
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=10)
        raise AssertionError(f"the command ignored signal {sig}") from None
    return p.returncode, err.decode()


SIGNALS = [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGHUP, 128 + signal.SIGHUP),
           (signal.SIGINT, 130)]


@pytest.mark.parametrize(("sig", "status"), SIGNALS, ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_recv_create_removes_its_queue_when_signalled(sig: int, status: int) -> None:
    """``ipcraft recv create:mq://x`` waiting for a message removes the queue when signalled."""
    name = unique_name("sigrecv")
    p = _start("recv", f"create:mq://{name}")
    try:
        _wait_for(lambda: _mq_exists(name), "creating the queue")
        time.sleep(0.2)  # let it block in recv
        code, err = _stop(p, sig)
        assert code == status, err
        assert "Traceback" not in err, err
        assert not _mq_exists(name), f"the queue survived signal {sig}"
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
        _remove_mq(name)


def test_send_create_blocked_on_a_full_queue_removes_it_on_sigterm() -> None:
    """``ipcraft send create:mq://x?maxmsg=1 a b c`` blocks on the full queue; SIGTERM removes it."""
    name = unique_name("sigsend")
    p = _start("send", f"create:mq://{name}?maxmsg=1", "a", "b", "c")
    try:
        _wait_for(lambda: _mq_exists(name), "creating the queue")
        time.sleep(0.3)
        assert p.poll() is None, "send did not block on the full queue"
        code, err = _stop(p, signal.SIGTERM)
        assert code == 128 + signal.SIGTERM, err
        assert not _mq_exists(name)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
        _remove_mq(name)


def test_relay_removes_both_queues_and_its_socket_on_sigterm(tmp_ipc_dir: str) -> None:
    """``ipcraft relay create:mq://a create:mq://b`` removes both queues on SIGTERM; ``relay
    listen:unix://... create:mq://c`` removes its socket file too."""
    a, b = unique_name("siga"), unique_name("sigb")
    p = _start("relay", f"create:mq://{a}", f"create:mq://{b}")
    try:
        _wait_for(lambda: _mq_exists(a) and _mq_exists(b), "creating both queues")
        time.sleep(0.2)
        code, err = _stop(p, signal.SIGTERM)
        assert code == 128 + signal.SIGTERM, err
        assert not _mq_exists(a) and not _mq_exists(b)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
        _remove_mq(a)
        _remove_mq(b)
    sock = os.path.join(tmp_ipc_dir, "relay.sock")
    p = _start("relay", f"listen:unix://{sock}", "create:mq://" + a)
    try:
        _wait_for(lambda: os.path.exists(sock), "the listening socket")
        time.sleep(0.2)
        code, err = _stop(p, signal.SIGTERM)
        assert code == 128 + signal.SIGTERM, err
        assert not os.path.exists(sock), "the socket file survived SIGTERM"
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
        _remove_mq(a)
