"""socat, the standard relay tool, exchanging messages with ipcraft's raw framings.

socat knows nothing of ipcraft: it moves bytes between a Unix socket and its standard input/output.
With ``framing=lines`` each newline-delimited line is one message; with ``framing=length`` each message
carries a 4-byte big-endian length prefix, which socat passes through untouched.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time

import pytest

import ipcraft

pytestmark = pytest.mark.skipif(shutil.which("socat") is None,
                                reason="socat is not installed (apt-get install socat; .ci/run installs it)")


def _wait_for_socket(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert proc.poll() is None, "the listener exited before binding"
        assert time.monotonic() < deadline, f"nothing bound {path}"
        time.sleep(0.01)


@pytest.mark.timeout(30)
def test_ipcraft_recv_prints_the_lines_socat_sends(tmp_ipc_dir: str) -> None:
    """`ipcraft recv --framing lines listen:unix://...` prints each line socat writes as one message."""
    path = os.path.join(tmp_ipc_dir, "recv.sock")
    receiver = subprocess.Popen([sys.executable, "-m", "ipcraft", "recv", "--framing", "lines",
                                 f"listen:unix://{path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_socket(path, receiver)
        socat = subprocess.run(["socat", "-u", "STDIN", f"UNIX-CONNECT:{path}"], input=b"one\ntwo\nthree\n",
                               capture_output=True, timeout=20)
        assert socat.returncode == 0, socat.stderr
        out, err = receiver.communicate(timeout=20)
        assert receiver.returncode == 0, err
        assert out == b"one\ntwo\nthree\n"
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate(timeout=10)


@pytest.mark.timeout(30)
def test_socat_reads_the_lines_ipcraft_sends(tmp_ipc_dir: str) -> None:
    """`ipcraft send --framing lines unix://...` into a socat listener: socat prints the lines."""
    path = os.path.join(tmp_ipc_dir, "send.sock")
    socat = subprocess.Popen(["socat", "-u", f"UNIX-LISTEN:{path}", "STDOUT"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        _wait_for_socket(path, socat)
        sent = subprocess.run([sys.executable, "-m", "ipcraft", "send", "--framing", "lines", f"unix://{path}",
                               "alpha", "beta"], capture_output=True, timeout=20)
        assert sent.returncode == 0, sent.stderr
        out, err = socat.communicate(timeout=20)
        assert socat.returncode == 0, err
        assert out == b"alpha\nbeta\n"
    finally:
        if socat.poll() is None:
            socat.kill()
            socat.communicate(timeout=10)


@pytest.mark.timeout(30)
def test_length_prefixed_messages_through_socat_both_ways(tmp_ipc_dir: str) -> None:
    """A channel with ``framing=length`` talks to a socat echo server (socat relays the bytes back
    through tee, which keeps a copy): messages of every size, newlines and NULs included, come back
    whole and in order, and the bytes on the socket are exactly length prefixes and payloads."""
    path = os.path.join(tmp_ipc_dir, "echo.sock")
    wire = os.path.join(tmp_ipc_dir, "wire.bin")
    socat = subprocess.Popen(["socat", f"UNIX-LISTEN:{path}", f"EXEC:tee {wire}"], stderr=subprocess.PIPE)
    try:
        _wait_for_socket(path, socat)
        messages = [b"", b"a\nb", b"\x00" * 7, os.urandom(70_000), b"last"]
        with ipcraft.connect(f"unix://{path}?framing=length", timeout=10) as ch:
            for m in messages:
                ch.send_bytes(m)
            got = [ch.recv_bytes(timeout=10) for _ in messages]
        assert got == messages
    finally:
        socat.terminate()
        socat.communicate(timeout=10)
    # What crossed the socket is the plain convention: a 4-byte big-endian length, then the bytes.
    with open(wire, "rb") as f:
        assert f.read() == b"".join(struct.pack(">I", len(m)) + m for m in messages)
