"""The fault-injection suite (``-m faults``; also part of the default run): for every scheme, producers
and consumers SIGKILLed at random points over many rounds.

Every message carries its producer incarnation, its sequence number and a CRC-32 of its body, so
afterwards each one is accounted for against the scheme's documented delivery semantics:

* **queues with many consumers** (mq://, sysvmq://, ring://, file://): nothing torn, nothing twice;
  a killed consumer loses at most the one message it was taking (the kernel, or the ring, has
  removed it; there is no acknowledgement); a killed producer's messages arrive up to the one it
  was sending; everything else sent arrives.
* **queues with one reader** (fifo://, unix+dgram://, udp://; the creator reads, producers are
  killed): nothing torn, nothing twice, each producer's messages a prefix of what it sent, in
  order.  fifo:// reports a producer killed mid-frame as one PeerVanished and keeps serving.
  udp:// may drop datagrams (its documented semantics): losses are counted, not refused.
* **connections** (unix://, unix+seqpacket://, tcp://, shm://, ipcraft.pipe()): one side killed
  while the other sends or receives: the survivor gets ChannelClosed (PeerVanished) within seconds,
  never hangs, and what it received is an in-order prefix of what was sent, nothing torn.

Counts go to the run's figures; the session fixture fails the run on a leaked IPC object.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import struct
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ipcraft
from ipcraft.errors import ChannelClosed, PeerVanished, Timeout
from ipcraft.testing import unique_key, unique_name

pytestmark = pytest.mark.faults

HEAD = struct.Struct("<IIII")  # incarnation, sequence, body length, CRC-32 of the body
STOP = b"STOP"
ROUNDS = int(os.environ.get("IPCRAFT_FAULT_ROUNDS", "16"))  # more on demand
SURVIVOR_BOUND = 10.0  # seconds a survivor may take to notice; more is a hang


def message(inc: int, seq: int, big: bool = False) -> bytes:
    rng = random.Random(inc << 32 | seq)
    n = rng.choice((0, 16, 300, 2000, 300_000 if big else 3000))
    body = rng.randbytes(n)
    return HEAD.pack(inc, seq, n, zlib.crc32(body)) + body


def check(data: bytes) -> tuple[int, int] | None:
    """(incarnation, sequence) of an intact message; None if it is torn."""
    if len(data) < HEAD.size:
        return None
    inc, seq, n, crc = HEAD.unpack_from(data)
    body = data[HEAD.size:]
    if len(body) != n or zlib.crc32(body) != crc:
        return None
    return inc, seq


# -- processes ---------------------------------------------------------------------------------------

def spawn(fn: Callable[..., Any], *args: Any) -> int:
    """Run ``fn(*args)`` in a forked child that can never outlive the test by more than a minute."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(60)
            fn(*args)
            code = 0
        except BaseException:  # noqa: BLE001 - a child reports and exits, whatever happened
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float = SURVIVOR_BOUND) -> int:
    """Wait for ``pid`` (SIGKILL it after ``timeout``); its wait status."""
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= end:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1] | 0x10000  # marks "had to be killed"
        time.sleep(0.002)


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status & 0xFFFF) and os.WTERMSIG(status & 0xFFFF) == signal.SIGKILL


class Log:
    """Append-only record of what a consumer received: one 8-byte entry per message, 0xFFFFFFFF for
    a torn one.  Appends of 8 bytes are atomic, so a kill never leaves half an entry."""

    ENTRY = struct.Struct("<II")
    TORN = 0xFFFFFFFF

    def __init__(self, path: Path) -> None:
        self.path = path

    def writer(self) -> Callable[[tuple[int, int] | None], None]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

        def write(ident: tuple[int, int] | None) -> None:
            os.write(fd, self.ENTRY.pack(*(ident or (self.TORN, self.TORN))))

        return write

    def read(self) -> list[tuple[int, int]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        return [self.ENTRY.unpack_from(data, i) for i in range(0, len(data), self.ENTRY.size)]


class Ledger:
    """Everything received, checked against what was sent."""

    def __init__(self) -> None:
        self.got: list[tuple[int, int]] = []
        self.sent: dict[int, int] = {}  # incarnation -> messages it meant to send
        self.killed_producers: set[int] = set()

    def account(self, allowed_loss: int | None) -> dict[str, int]:
        """Counts; fails on a torn or duplicated message, or a loss beyond ``allowed_loss`` (None: any)."""
        torn = sum(1 for g in self.got if g[0] == Log.TORN)
        assert torn == 0, f"{torn} torn messages"
        seen = [g for g in self.got if g[0] != Log.TORN]
        dups = len(seen) - len(set(seen))
        assert dups == 0, f"{dups} messages delivered twice"
        by_inc: dict[int, set[int]] = {}
        for inc, seq in seen:
            by_inc.setdefault(inc, set()).add(seq)
        lost = 0
        for inc, n in self.sent.items():
            seqs = by_inc.get(inc, set())
            assert all(s < n for s in seqs), f"producer {inc}: a message it never sent"
            # A killed producer's last message may be missing (it died sending it), or all after it.
            top = max(seqs) + 1 if seqs else 0
            expected = top if inc in self.killed_producers else n
            lost += expected - len(seqs)
        if allowed_loss is not None:
            assert lost <= allowed_loss, f"{lost} messages lost; the semantics allow {allowed_loss}"
        return {"received": len(seen), "lost": lost, "producers": len(self.sent),
                "producers killed": len(self.killed_producers)}


# -- queues with many consumers ----------------------------------------------------------------------

MULTI = {
    "mq": lambda tmp: (f"mq://{unique_name('flt')}", {"maxmsg": 10, "msgsize": 4096}),
    "sysvmq": lambda tmp: (f"sysvmq://{unique_key()}", {}),
    "ring": lambda tmp: (f"ring://{unique_name('flt')}", {"capacity": 1 << 16}),
    "file": lambda tmp: (f"file://{tmp}/queue", {"capacity": 1 << 16}),
}
PER_PRODUCER = 300


def _produce(url: str, inc: int, n: int, big: bool = False) -> None:
    with ipcraft.queue(url) as q:
        for seq in range(n):
            q.send_bytes(message(inc, seq, big), timeout=30)


def _consume(url: str, log: Log) -> None:
    write = log.writer()
    with ipcraft.queue(url) as q:
        while True:
            data = q.recv_bytes(timeout=30)
            if data == STOP:
                return
            write(check(data))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", sorted(MULTI))
def test_queue_producers_and_consumers_killed_at_random(scheme: str, tmp_path: Path, figures: Any) -> None:
    url, opts = MULTI[scheme](tmp_path)
    rng = random.Random(f"{scheme}-faults")
    ledger = Ledger()
    consumers_killed = hung = 0
    logs: list[Log] = []
    with ipcraft.queue(url, create=True, **opts) as owner:
        for rnd in range(ROUNDS):
            producers = {}
            for i in range(2):
                inc = rnd * 2 + i
                ledger.sent[inc] = PER_PRODUCER
                producers[inc] = spawn(_produce, url, inc, PER_PRODUCER)
            consumers = []
            for i in range(2):
                log = Log(tmp_path / f"consumer-{rnd}-{i}")
                logs.append(log)
                consumers.append(spawn(_consume, url, log))
            time.sleep(rng.uniform(0.0, 0.03))
            victims = []
            if rng.random() < 0.8:
                inc = rng.choice(list(producers))
                victims.append(producers[inc])
                ledger.killed_producers.add(inc)
            if rng.random() < 0.6:
                victims.append(rng.choice(consumers))
                consumers_killed += 1
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            for pid in victims:  # gone for good before the STOPs: a dying receiver still queued in the
                status = reap(pid)  # kernel could be handed one (mq's pipelined send)
                if status == 0 and pid in producers.values():  # it had sent everything before the kill
                    ledger.killed_producers.discard(next(i for i, p in producers.items() if p == pid))
                else:
                    assert killed(status), f"a victim failed before its kill (status {status:#x})"
            for pid in producers.values():
                if pid not in victims:
                    status = reap(pid, 30)
                    assert status == 0, f"a producer failed (status {status:#x})"
            alive = [pid for pid in consumers if pid not in victims]
            for _ in alive:
                owner.send_bytes(STOP, timeout=10)
            for pid in alive:
                status = reap(pid)
                hung += status >> 16
                assert status == 0, f"a surviving consumer failed or hung ({status:#x})"
        while True:  # what no consumer took (a round whose consumer was killed early)
            try:
                data = owner.recv_bytes(timeout=0.2)
            except Timeout:
                break
            if data != STOP:
                ledger.got.append(check(data) or (Log.TORN, Log.TORN))
    for log in logs:
        ledger.got += log.read()
    counts = ledger.account(allowed_loss=consumers_killed)  # at most the one each killed consumer was taking
    figures(f"{scheme}: {ROUNDS} rounds, {counts['producers killed']} producers and {consumers_killed} consumers "
            f"SIGKILLed; {counts['received']} messages received, {counts['lost']} lost (allowed "
            f"{consumers_killed}), 0 torn, 0 duplicated, {hung} hung")
    assert hung == 0


# -- queues with one reader --------------------------------------------------------------------------

SINGLE = {
    "fifo": lambda tmp: (f"fifo://{tmp}/fifo", {}),
    "unix+dgram": lambda tmp: (f"unix+dgram://{tmp}/dgram.sock", {}),
    "udp": lambda tmp: ("udp://127.0.0.1:0", {"recv_buffer": 4 << 20}),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", sorted(SINGLE))
def test_single_reader_queue_producers_killed_at_random(scheme: str, tmp_path: Path, figures: Any) -> None:
    url, opts = SINGLE[scheme](tmp_path)
    rng = random.Random(f"{scheme}-faults")
    ledger = Ledger()
    vanished = 0
    big = scheme == "fifo"  # frames beyond PIPE_BUF: a kill can land mid-frame
    with ipcraft.queue(url, create=True, **opts) as reader:
        send_url = str(reader.endpoint) if scheme == "udp" else url
        for rnd in range(ROUNDS):
            producers = {}
            for i in range(2):
                inc = rnd * 2 + i
                ledger.sent[inc] = PER_PRODUCER
                producers[inc] = spawn(_produce, send_url, inc, PER_PRODUCER, big)
            kill_at = time.monotonic() + rng.uniform(0.0, 0.03)
            victim = rng.choice(list(producers)) if rng.random() < 0.8 else None
            if victim is not None:
                ledger.killed_producers.add(victim)
            running = dict(producers)
            quiet_since = None
            while True:
                if victim is not None and time.monotonic() >= kill_at and victim in running:
                    os.kill(producers[victim], signal.SIGKILL)
                try:
                    data = reader.recv_bytes(timeout=0.05)
                    quiet_since = None
                    ledger.got.append(check(data) or (Log.TORN, Log.TORN))
                except PeerVanished:
                    vanished += 1  # fifo://: the killed writer's partial frame was discarded
                except Timeout:
                    quiet_since = quiet_since or time.monotonic()
                for inc, pid in list(running.items()):
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        assert inc == victim or status == 0, f"a producer failed (status {status:#x})"
                        if status == 0:
                            ledger.killed_producers.discard(inc)  # it had sent everything before the kill
                        del running[inc]
                if not running and quiet_since is not None and time.monotonic() - quiet_since > 0.2:
                    break
                assert quiet_since is None or time.monotonic() - quiet_since < SURVIVOR_BOUND, "the reader hung"
    counts = ledger.account(allowed_loss=None if scheme == "udp" else 0)
    order_ok = _in_order(ledger.got)
    figures(f"{scheme}: {ROUNDS} rounds, {counts['producers killed']} producers SIGKILLed; "
            f"{counts['received']} messages received, {counts['lost']} lost"
            f"{' (datagrams may be dropped)' if scheme == 'udp' else ''}, 0 torn, 0 duplicated, "
            f"{vanished} PeerVanished reported")
    assert order_ok


def _in_order(got: list[tuple[int, int]]) -> bool:
    last: dict[int, int] = {}
    for inc, seq in got:
        if seq <= last.get(inc, -1):
            return False
        last[inc] = seq
    return True


# -- connections -------------------------------------------------------------------------------------

CONNECTIONS = ["unix", "unix+seqpacket", "tcp", "shm", "pipe"]


@contextlib.contextmanager
def connection(scheme: str, role: Callable[..., Any], *args: Any) -> Iterator[tuple[Any, int]]:
    """(this side's channel, the peer's pid), the peer running ``role(channel, *args)`` in a child."""
    if scheme == "pipe":
        a, b = ipcraft.pipe()
        pid = spawn(lambda: (a.close(), role(b, *args)))
        b.close()
        try:
            yield a, pid
        finally:
            a.close()
        return
    if scheme == "tcp":
        url, opts = "tcp://127.0.0.1:0", {"insecure": True}
    elif scheme == "shm":
        url, opts = f"shm://{unique_name('flt')}", {"capacity": 1 << 16}
    else:
        url, opts = f"{scheme}:@{unique_name('flt')}", {}
    with ipcraft.listen(url, **opts) as listener:
        url = str(listener.endpoint) if scheme != "tcp" else f"tcp://127.0.0.1:{listener.endpoint.host_port[1]}"

        def peer() -> None:
            with ipcraft.connect(url, timeout=10, **opts) as ch:
                role(ch, *args)

        pid = spawn(peer)
        ch = listener.accept(timeout=10)
    try:
        yield ch, pid
    finally:
        ch.close()


def _send_forever(ch: Any) -> None:
    seq = 0
    while True:
        ch.send_bytes(message(1, seq))
        seq += 1


def _recv_forever(ch: Any, log: Log) -> None:
    write = log.writer()
    while True:
        write(check(ch.recv_bytes()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", CONNECTIONS)
def test_connection_side_killed_at_random(scheme: str, tmp_path: Path, figures: Any) -> None:
    rng = random.Random(f"{scheme}-faults")
    received = sent_total = 0
    endings: dict[str, int] = {}
    for rnd in range(ROUNDS):
        delay = rng.uniform(0.005, 0.05)
        if rnd % 2 == 0:  # the peer produces and is killed; this side receives
            with connection(scheme, _send_forever) as (ch, pid):
                threading.Timer(delay, os.kill, (pid, signal.SIGKILL)).start()
                got = []
                start = time.monotonic()
                try:
                    while True:
                        got.append(check(ch.recv_bytes(timeout=SURVIVOR_BOUND)))
                except ChannelClosed as exc:
                    endings[type(exc).__name__] = endings.get(type(exc).__name__, 0) + 1
                assert time.monotonic() - start < SURVIVOR_BOUND + delay + 5
                assert killed(reap(pid))
            assert None not in got, "a torn message"
            assert got == [(1, s) for s in range(len(got))], "not an in-order prefix of what was sent"
            received += len(got)
        else:  # the peer consumes and is killed; this side sends
            log = Log(tmp_path / f"conn-{rnd}")
            with connection(scheme, _recv_forever, log) as (ch, pid):
                threading.Timer(delay, os.kill, (pid, signal.SIGKILL)).start()
                seq = 0
                try:
                    while True:
                        ch.send_bytes(message(1, seq), timeout=SURVIVOR_BOUND)
                        seq += 1
                except ChannelClosed as exc:
                    endings[type(exc).__name__] = endings.get(type(exc).__name__, 0) + 1
                assert killed(reap(pid))
            got_log = log.read()
            assert (Log.TORN, Log.TORN) not in got_log, "a torn message"
            assert got_log == [(1, s) for s in range(len(got_log))], "not an in-order prefix of what was sent"
            assert len(got_log) <= seq
            received += len(got_log)
            sent_total += seq
    figures(f"{scheme}: {ROUNDS} rounds, one side SIGKILLed each; {received} messages received intact and in "
            f"order, {sent_total} sent by survivors to killed receivers; survivors ended with {endings}")
    assert sum(endings.values()) == ROUNDS


def test_check_detects_a_torn_message() -> None:
    """The suite's checksum notices a body cut short or changed, so 0 torn means something."""
    data = message(3, 4)
    assert check(data) == (3, 4)
    assert check(data[:-1] if len(data) > HEAD.size else data + b"x") is None
    flipped = bytearray(message(3, 5))
    if len(flipped) > HEAD.size:
        flipped[-1] ^= 1
        assert check(bytes(flipped)) is None
    assert check(b"\0" * 3) is None
