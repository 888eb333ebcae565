"""The C peer (c/ipcraft.h and its two example programs) against Python, both ways, on ring:// and shm://.

The examples are compiled here with the system C compiler; they do not link anything of ipcraft's.
Each direction moves 100,000 messages of mixed sizes (empty to 1 MiB) whose CRC-32s are compared one by
one, in order.  A C process killed by SIGKILL mid-stream must leave the Python side with a clean
PeerVanished (shm://) or no torn message (ring://), and the ring usable by the next process.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

import ipcraft
from ipcraft.errors import PeerVanished, Timeout
from ipcraft.testing import unique_name
from transports.test_busy import busy_machine, ring_cursor, wait_until_busy

ROOT = Path(__file__).resolve().parent.parent
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
COUNT = 100_000
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on PATH to build c/examples")


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """c/examples/producer.c and consumer.c compiled with the system compiler, warnings as errors."""
    out = tmp_path_factory.mktemp("c-peer")
    built = {}
    for name in ("producer", "consumer"):
        exe = out / name
        subprocess.run([str(CC), "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread",
                        "-I", str(ROOT / "c"), "-o", str(exe), str(ROOT / "c" / "examples" / f"{name}.c")],
                       check=True, timeout=120)
        built[name] = str(exe)
    return built


def messages(count: int = COUNT, seed: int = 11) -> list[bytes]:
    """``count`` messages without newlines: mostly 0-255 bytes, 1 in 200 of 1-64 KiB, and a few of
    exactly 1 MiB (the longest line the producer takes)."""
    rng = random.Random(seed)
    no_newline = bytes.maketrans(b"\n", b"\x0b")
    out = []
    for i in range(count):
        if i % 10_000 == 5_000:
            n = MIB
        elif i % 200 == 7:
            n = rng.randrange(1024, 64 * 1024)
        else:
            n = rng.randrange(256)
        out.append(rng.randbytes(n).translate(no_newline))
    return out


def write_lines(path: Path, msgs: list[bytes]) -> None:
    with open(path, "wb") as f:
        for m in msgs:
            f.write(m)
            f.write(b"\n")


def crcs(msgs: list[bytes]) -> list[tuple[int, int]]:
    return [(len(m), zlib.crc32(m)) for m in msgs]


@pytest.fixture(params=["ring", "shm"])
def url(request: pytest.FixtureRequest) -> str:
    return f"{request.param}://{unique_name('cpeer')}"


class Peer:
    """A C example process with its standard streams in files; killed at exit if still running."""

    def __init__(self, exe: str, url: str, stdin: Path | None, stdout: Path, *args: str) -> None:
        self.stdout = stdout
        self.stderr = ""
        with open(stdin or os.devnull, "rb") as i, open(stdout, "wb") as o:
            self.proc = subprocess.Popen([exe, url, *args], stdin=i, stdout=o, stderr=subprocess.PIPE)

    def lines(self) -> list[bytes]:
        data = self.stdout.read_bytes()
        assert data.endswith(b"\n") or not data
        return data.split(b"\n")[:-1]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()


def open_python_side(url: str) -> Any:
    """The Python end the C program meets: the ring, created; or the shm:// listener."""
    if url.startswith("ring://"):
        return ipcraft.queue(url, create=True, serializer="raw")
    return ipcraft.listen(url, serializer="raw")


def accept(side: Any, url: str) -> Any:
    """The channel to the C program: the ring itself, or the accepted shm:// connection."""
    return side if url.startswith("ring://") else side.accept(timeout=20)


def receive(ch: Any, count: int, timeout: float = 30) -> list[tuple[int, int]]:
    out = []
    for _ in range(count):
        m = ch.recv_bytes(timeout=timeout)
        out.append((len(m), zlib.crc32(m)))
    return out


def test_c_producer_to_python_consumer(programs, url, tmp_path):
    """100,000 checksummed messages from the C producer arrive whole and in order in Python; on
    shm:// the producer's close at end of input is a clean ChannelClosed."""
    msgs = messages()
    write_lines(tmp_path / "in", msgs)
    with open_python_side(url) as side:
        peer = Peer(programs["producer"], url, tmp_path / "in", tmp_path / "out")
        try:
            ch = accept(side, url)
            assert receive(ch, COUNT) == crcs(msgs)
            assert peer.wait(30) == 0, peer.stderr
            if url.startswith("shm://"):
                with pytest.raises(ipcraft.errors.ChannelClosed) as end:
                    ch.recv_bytes(timeout=10)
                assert not isinstance(end.value, PeerVanished)
                ch.close()
            else:
                with pytest.raises(Timeout):
                    ch.recv_bytes(timeout=0)
        finally:
            peer.kill()


def receive_into(ch: Any, count: int, timeout: float = 30) -> list[tuple[int, int]]:
    """receive() through recv_bytes_into(buffer) on one reused buffer (the C try_recv_into path)."""
    out, buf = [], bytearray(1 << 20)
    for _ in range(count):
        assert ch.poll(timeout), "no message from the C producer"
        n = ch.recv_bytes_into(buf)
        out.append((n, zlib.crc32(memoryview(buf)[:n])))
    return out


def test_c_producer_to_python_recv_bytes_into(programs, url, tmp_path):
    """The C producer's messages, received with recv_bytes_into into one reused buffer, arrive whole
    and in order (records that wrap the ring included)."""
    msgs = messages(count=20_000, seed=13)
    write_lines(tmp_path / "in", msgs)
    with open_python_side(url) as side:
        peer = Peer(programs["producer"], url, tmp_path / "in", tmp_path / "out")
        try:
            ch = accept(side, url)
            assert receive_into(ch, len(msgs)) == crcs(msgs)
            assert peer.wait(30) == 0, peer.stderr
            if url.startswith("shm://"):
                ch.close()
        finally:
            peer.kill()


def wait_for_size(path: Path, size: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while os.path.getsize(path) < size:
        assert time.monotonic() < deadline, f"{path} has {os.path.getsize(path)} of {size} bytes"
        time.sleep(0.01)


def test_python_producer_to_c_consumer(programs, url, tmp_path):
    """100,000 checksummed messages sent from Python are written whole and in order by the C
    consumer; on shm:// it ends cleanly (exit 0) when Python closes."""
    msgs = messages(seed=12)
    with open_python_side(url) as side:
        peer = Peer(programs["consumer"], url, None, tmp_path / "out")
        try:
            ch = accept(side, url)
            for m in msgs:
                ch.send_bytes(m, timeout=30)
            if url.startswith("shm://"):
                ch.close()
                assert peer.wait(30) == 0, peer.stderr
            else:
                wait_for_size(tmp_path / "out", sum(len(m) + 1 for m in msgs), 60)
                peer.kill()
            assert crcs(peer.lines()) == crcs(msgs)
        finally:
            peer.kill()


# -- SIGKILL of the C process mid-stream ----------------------------------------------------------------

def feed(proc: subprocess.Popen[bytes], msgs: list[bytes]) -> threading.Thread:
    """Write ``msgs`` as lines to the producer's standard input from a thread, until it dies."""
    def run() -> None:
        assert proc.stdin is not None
        try:
            for m in msgs:
                proc.stdin.write(m + b"\n")
            proc.stdin.close()
        except OSError:  # EPIPE: the producer was killed
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def start_producer(programs: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([programs["producer"], url], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_shm_c_producer_killed_gives_peer_vanished(programs):
    """The C producer killed mid-stream: Python gets every message it published, intact and in order,
    then PeerVanished (not a clean ChannelClosed)."""
    url = f"shm://{unique_name('kp')}"
    msgs = messages(seed=13)
    with ipcraft.listen(url, serializer="raw") as listener:
        proc = start_producer(programs, url)
        feeder = feed(proc, msgs)
        try:
            ch = listener.accept(timeout=20)
            got = receive(ch, 20_000)
            kill(proc)
            with pytest.raises(PeerVanished):
                while True:
                    m = ch.recv_bytes(timeout=10)
                    got.append((len(m), zlib.crc32(m)))
            assert 20_000 <= len(got) < COUNT and got == crcs(msgs[:len(got)])
            ch.close()
        finally:
            kill(proc)
            feeder.join(10)


def test_shm_c_consumer_killed_gives_peer_vanished(programs, tmp_path):
    """The C consumer killed mid-stream: the Python sender gets PeerVanished once the ring is full,
    and what the consumer wrote before it died is an intact prefix."""
    url = f"shm://{unique_name('kc')}"
    msgs = messages(seed=14)
    with ipcraft.listen(url, serializer="raw") as listener, open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen([programs["consumer"], url], stdout=out, stderr=subprocess.DEVNULL)
        try:
            ch = listener.accept(timeout=20)
            for m in msgs[:20_000]:
                ch.send_bytes(m, timeout=30)
            kill(proc)
            with pytest.raises(PeerVanished):
                for m in msgs[20_000:]:
                    ch.send_bytes(m, timeout=10)
            ch.close()
        finally:
            kill(proc)
    lines = (tmp_path / "out").read_bytes().split(b"\n")[:-1]  # a line cut by the kill has no newline
    assert len(lines) <= 20_000 and crcs(lines) == crcs(msgs[:len(lines)])


def test_ring_c_producer_killed_leaves_no_torn_message(programs):
    """The C producer killed mid-stream: the ring holds only whole messages (an intact prefix of what
    was fed), and its producers' lock still works for the next producer."""
    url = f"ring://{unique_name('rp')}"
    msgs = messages(seed=15)
    with ipcraft.queue(url, create=True, serializer="raw") as q:
        proc = start_producer(programs, url)
        feeder = feed(proc, msgs)
        try:
            got = receive(q, 20_000)
            kill(proc)
            while True:
                try:
                    m = q.recv_bytes(timeout=1)
                except Timeout:
                    break
                got.append((len(m), zlib.crc32(m)))
            assert 20_000 <= len(got) < COUNT and got == crcs(msgs[:len(got)])
            q.send_bytes(b"after the kill", timeout=5)
            assert q.recv_bytes(timeout=5) == b"after the kill"
        finally:
            kill(proc)
            feeder.join(10)


def test_ring_c_consumer_killed_leaves_no_torn_message(programs, tmp_path):
    """The C consumer killed mid-stream: what it wrote is an intact prefix, and a Python consumer then
    receives the rest whole and in order (at most the one message being taken at the kill is lost)."""
    url = f"ring://{unique_name('rc')}"
    msgs = messages(seed=16)
    with ipcraft.queue(url, create=True, serializer="raw") as q, open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen([programs["consumer"], url], stdout=out, stderr=subprocess.DEVNULL)
        errors: list[BaseException] = []

        def send_all() -> None:
            try:
                for m in msgs:
                    q.send_bytes(m, timeout=30)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        try:
            wait_for_size(tmp_path / "out", sum(len(m) + 1 for m in msgs[:20_000]), 60)
            kill(proc)
            rest = []
            with ipcraft.queue(url, serializer="raw") as r:
                while True:
                    try:
                        m = r.recv_bytes(timeout=2)
                    except Timeout:
                        if not sender.is_alive():
                            break
                        continue
                    rest.append((len(m), zlib.crc32(m)))
            sender.join(30)
            assert not errors
        finally:
            kill(proc)
    lines = (tmp_path / "out").read_bytes().split(b"\n")[:-1]
    k = len(lines)
    assert k >= 20_000 and crcs(lines) == crcs(msgs[:k])
    skipped = COUNT - k - len(rest)
    assert skipped in (0, 1) and rest == crcs(msgs[k + skipped:])


# A C requester: sends "next", receives one message and prints its length and CRC-32 (computed the
# same way as zlib.crc32), until the Python side closes.  With a second argument "echo" it sends each
# message back instead of "next" (the first request excepted): a reply, which may take the region.
_REQUESTER = r"""
#include "ipcraft.h"
#include <stdlib.h>

static uint32_t crc32(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

int main(int argc, char **argv)
{
    ipc_chan ch;
    if (argc < 2 || ipc_open(&ch, argv[1]) < 0)
        return 2;
    int echo = argc > 2 && strcmp(argv[2], "echo") == 0;
    size_t room = 1024 * 1024;
    unsigned char *buf = malloc(room);
    ssize_t n = -1;
    for (;;) {
        if (echo && n >= 0 ? ipc_send(&ch, buf, (size_t)n) < 0 : ipc_send(&ch, "next", 4) < 0)
            break;
        n = ipc_recv(&ch, buf, room);
        if (n < 0)
            break;
        printf("%zd %u\n", n, crc32(buf, (size_t)n));
        fflush(stdout);
    }
    ipc_close(&ch);
    free(buf);
    return 0;
}
"""


def build_requester(tmp_path: Path, *defines: str) -> Path:
    src, exe = tmp_path / "requester.c", tmp_path / "requester"
    src.write_text(_REQUESTER)
    subprocess.run([str(CC), "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread", *defines,
                    "-I", str(ROOT / "c"), "-o", str(exe), str(src)], check=True, timeout=120)
    return exe


def test_shm_c_consumer_reads_replies_that_start_at_the_front_of_the_ring(tmp_path: Path) -> None:
    """On a busy machine ipcraft writes a large reply at the front of the empty ring behind a wrap
    marker (docs/spec/spsc-ring.md allows it anywhere); the C peer's consumer must read those
    replies whole.  The C program asks for each message, so every Python send follows a receive.
    Built for handshake version 1, which has no shared region: the replies must use the ring."""
    exe = build_requester(tmp_path, "-DIPC_SHM_VERSION=1")
    url = f"shm://{unique_name('cfront')}"
    rng = random.Random(5)
    msgs = [rng.randbytes(n) for n in [65536, 8192, 300_000, 65536, 100, 65536] * 4]
    fronts = 0
    with busy_machine(), ipcraft.listen(url, serializer="raw") as lst:
        peer = Peer(str(exe), url, None, tmp_path / "out")
        try:
            with lst.accept(timeout=20) as ch:
                position, capacity = ring_cursor(ch)  # white box: where each reply lands
                for m in msgs:
                    assert ch.recv_bytes(timeout=20) == b"next"
                    wait_until_busy()
                    ch.send_bytes(m, timeout=20)
                    at = position() % capacity
                    fronts += at == 8 + (len(m) + 7) // 8 * 8 and len(m) >= 8192
                assert ch.recv_bytes(timeout=20) == b"next"
            assert peer.wait(30) == 0, peer.stderr
        finally:
            peer.kill()
    got = [tuple(int(x) for x in line.split()) for line in peer.lines()]
    assert got == [(len(m), zlib.crc32(m)) for m in msgs]
    # 16 can: the very first reply is at offset 0 already, and each 300,000-byte one follows an 8 KiB
    # one, so the front holds fewer bytes than it needs.  (A few may miss if the run queue empties.)
    assert fronts >= 12, f"only {fronts} of the 16 large replies that could started at the ring's front"


def test_shm_c_peer_and_python_exchange_large_replies_through_the_shared_region(tmp_path: Path) -> None:
    """Handshake version 2 (the C peer's default): each large reply, in both directions, travels
    through the connection's shared region (the ring carries an 8-byte record; white box: the
    cursors), and arrives whole: Python's replies read by C, C's echoes read by Python."""
    exe = build_requester(tmp_path)
    url = f"shm://{unique_name('cregion')}"
    rng = random.Random(6)
    msgs = [rng.randbytes(n) for n in [65536, 8192, 300_000, 100, 1 << 19, 20_000] * 4]
    via_region = [0, 0]
    with ipcraft.listen(url, serializer="raw") as lst:
        peer = Peer(str(exe), url, None, tmp_path / "out", "echo")
        try:
            with lst.accept(timeout=20) as ch:
                transport = ch._transport  # type: ignore[attr-defined]
                assert transport.version == 2
                tx, rx = transport.tx.native, transport.rx.native
                assert ch.recv_bytes(timeout=20) == b"next"
                for m in msgs:
                    before = tx.position
                    ch.send_bytes(m, timeout=20)
                    via_region[0] += tx.position - before == 8
                    before = rx.position
                    assert ch.recv_bytes(timeout=20) == m
                    via_region[1] += rx.position - before == 8
            assert peer.wait(30) == 0, peer.stderr
        finally:
            peer.kill()
    got = [tuple(int(x) for x in line.split()) for line in peer.lines()]
    assert got == [(len(m), zlib.crc32(m)) for m in msgs]
    large = sum(len(m) >= 8192 for m in msgs)
    assert via_region == [large, large]
