"""ring:// and file://: ownership, limits, waiting, many producers and consumers, processes killed at
random moments, and file:// recovery after a crash."""

from __future__ import annotations

import os
import random
import select
import signal
import struct
import time
import zlib
from typing import Any

import pytest

import ipcraft
from ipcraft._rings import mpmc as _mpmc
from ipcraft.errors import InvalidEndpoint, MessageTooLarge, ProtocolError, Timeout
from ipcraft.testing import Child, unique_name

_HDR = struct.Struct("<IIII")  # tag, seq, crc32 of the body, body length
_REPORT = struct.Struct("<III")  # what a child did: tag, seq, locks it took over from dead holders so far


def _body(tag: int, seq: int, size: int) -> bytes:
    """A body that differs from every other message's at every 8 bytes, so a torn one cannot pass."""
    return (struct.pack("<II", tag, seq) * (size // 8 + 1))[:size]


def _message(tag: int, seq: int, size: int) -> bytes:
    body = _body(tag, seq, size)
    return _HDR.pack(tag, seq, zlib.crc32(body), size) + body


def _check(data: bytes) -> tuple[int, int]:
    """(tag, seq) of an intact message (checksum and every byte); AssertionError for a torn one."""
    tag, seq, crc, size = _HDR.unpack_from(data)
    body = data[_HDR.size:]
    assert len(body) == size and zlib.crc32(body) == crc and body == _body(tag, seq, size), \
        f"torn message tag {tag} seq {seq}"
    return tag, seq


@pytest.fixture()
def ring_url() -> str:
    return f"ring://{unique_name('rq')}"


@pytest.fixture()
def file_url(tmp_ipc_dir: str) -> str:
    return f"file://{tmp_ipc_dir}/{unique_name('fq')}"


# -- lifecycle and limits --------------------------------------------------------------------------

def test_ring_owner_unlinks_and_openers_never_do(ring_url: str) -> None:
    """The creating handle removes /dev/shm/name on close; openers, and a forked copy of the owner, do not."""
    path = "/dev/shm/" + ring_url.removeprefix("ring://")
    q = ipcraft.queue(ring_url, create=True)
    assert q.owner and os.stat(path).st_mode & 0o777 == 0o600
    with ipcraft.queue(ring_url) as o:
        assert not o.owner
    Child(lambda: q.close()).result(10)
    assert os.path.exists(path)
    q.send_bytes(b"still there")
    q.close()
    assert not os.path.exists(path)


def test_create_open_and_if_missing(ring_url: str) -> None:
    """create=True is exclusive, create=False needs the queue, "if_missing" does whichever applies."""
    with pytest.raises(FileNotFoundError):
        ipcraft.queue(ring_url)
    with ipcraft.queue(ring_url, create="if_missing") as a:
        assert a.owner
        with pytest.raises(FileExistsError):
            ipcraft.queue(ring_url, create=True)
        with ipcraft.queue(ring_url, create="if_missing") as b:
            assert not b.owner
            b.send("x")
            assert a.recv(timeout=5) == "x"


def test_capacity_is_rounded_and_limits_messages(ring_url: str) -> None:
    """capacity= rounds up to a power of two; a message that cannot fit is MessageTooLarge naming it."""
    with ipcraft.queue(ring_url, create=True, capacity=5000) as q:
        assert q.extra("ring_capacity") == 8192
        with pytest.raises(MessageTooLarge, match="8192 bytes of ring"):
            q.send_bytes(bytes(8192))
        q.send_bytes(bytes(8192 - 16))
        assert len(q.recv_bytes(timeout=5)) == 8192 - 16


def test_options_are_checked(ring_url: str, file_url: str) -> None:
    """sync= belongs to file:// only; wait= takes block or spin."""
    with pytest.raises(InvalidEndpoint, match="sync"):
        ipcraft.queue(ring_url + "?sync=true", create=True)
    with pytest.raises(InvalidEndpoint, match="spin"):
        ipcraft.queue(ring_url + "?wait=never", create=True)


def test_foreign_segment_is_a_protocol_error(ring_url: str) -> None:
    """Opening a /dev/shm segment that is not an ipcraft queue raises ProtocolError and keeps nothing open."""
    from ipcraft.primitives.shm import PosixSharedMemory

    name = ring_url.removeprefix("ring://")
    with PosixSharedMemory.create(name, 3 * 4096) as shm:
        shm.buf[:8] = b"NOTARING"
        with pytest.raises(ProtocolError, match="not an ipcraft"):
            ipcraft.queue(ring_url)


def test_corrupted_header_of_a_live_file_queue(file_url: str) -> None:
    """A file:// queue whose header was overwritten is refused on open with ProtocolError."""
    with ipcraft.queue(file_url, create=True):
        pass
    path = file_url.removeprefix("file://")
    with open(path, "r+b") as f:
        f.seek(_mpmc.OFF_CAPACITY)
        f.write(struct.pack("<Q", 12345))
    with pytest.raises(ProtocolError, match="impossible header"):
        ipcraft.queue(file_url)


def test_other_user_cannot_open_a_private_ring(ring_url: str) -> None:
    """A 0600 ring refuses another user (nobody) with PermissionError."""
    def as_nobody() -> str:
        os.setgid(65534)
        os.setuid(65534)
        try:
            ipcraft.queue(ring_url)
        except PermissionError:
            return "refused"
        return "opened"

    with ipcraft.queue(ring_url, create=True):
        assert Child(as_nobody).result(10) == "refused"


def test_file_queue_survives_close_and_unlink_removes_it(file_url: str) -> None:
    """Closing even the creator keeps the file and its messages; unlink() deletes it."""
    path = file_url.removeprefix("file://")
    with ipcraft.queue(file_url, create=True, capacity=8192) as q:
        q.send("kept")
        assert q.owner and q.extra("durable") is True
    assert os.path.exists(path)
    with ipcraft.queue(file_url) as q:
        assert q.recv(timeout=5) == "kept"
        q.unlink()
    assert not os.path.exists(path)


def test_sync_option_round_trips(file_url: str) -> None:
    """file://?sync=true (msync on every send and receive) carries messages like the default."""
    with ipcraft.queue(file_url + "?sync=true", create=True, capacity=8192) as q:
        assert q.extra("sync") is True
        for i in range(20):
            q.send_bytes(b"%d" % i * 300)
            assert q.recv_bytes(timeout=5) == b"%d" % i * 300
        q.unlink()


# -- waiting ---------------------------------------------------------------------------------------

def _send_later(url: str, delay: float, data: bytes) -> None:
    with ipcraft.queue(url) as q:
        time.sleep(delay)
        q.send_bytes(data)


@pytest.mark.parametrize("wait", ["block", "spin"])
def test_blocked_receiver_wakes_for_another_process(ring_url: str, wait: str) -> None:
    """A receiver blocked on an empty queue (sleeping, or spinning) gets a message another process sends."""
    with ipcraft.queue(ring_url, create=True, wait=wait) as q:
        child = Child(_send_later, ring_url, 0.2, b"wake")
        assert q.recv_bytes(timeout=10) == b"wake"
        child.result(10)


def test_blocked_sender_wakes_when_room_is_made(ring_url: str) -> None:
    """A sender blocked on a full queue proceeds once a receiver in another process makes room."""
    def drain(url: str) -> int:
        with ipcraft.queue(url) as q:
            time.sleep(0.2)
            return len(q.recv_bytes(timeout=5))

    with ipcraft.queue(ring_url, create=True, capacity=4096) as q:
        q.send_bytes(bytes(3000))
        child = Child(drain, ring_url)
        q.send_bytes(bytes(3000), timeout=10)  # waits for the child's receive
        assert child.result(10) == 3000
        assert len(q.recv_bytes(timeout=5)) == 3000


def test_ctrl_c_interrupts_a_blocked_receive(ring_url: str) -> None:
    """SIGINT interrupts a receive waiting on an empty queue with KeyboardInterrupt, whether it arrives
    while the receiver spins, sleeps, or is about to sleep."""
    def receive(url: str) -> list[str]:
        signal.signal(signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGINT))
        out = []
        with ipcraft.queue(url) as q:
            for delay in (0.0001, 0.0002, 0.0005, 0.01, 0.05, 0.13, 0.3):
                try:
                    signal.setitimer(signal.ITIMER_REAL, delay)
                    q.recv(timeout=5)
                    out.append("returned")
                except KeyboardInterrupt:
                    out.append("interrupted")
        return out

    with ipcraft.queue(ring_url, create=True):
        assert Child(receive, ring_url).result(20) == ["interrupted"] * 7


def test_fileno_is_readable_when_another_process_sends(ring_url: str) -> None:
    """fileno() gives a socket select() reports readable once a message is pending, and not before."""
    with ipcraft.queue(ring_url, create=True) as q:
        fd = q.fileno()
        assert select.select([fd], [], [], 0.05)[0] == []
        child = Child(_send_later, ring_url, 0.1, b"sel")
        assert select.select([fd], [], [], 10)[0] == [fd]
        assert q.recv_bytes(timeout=0) == b"sel"
        child.result(10)
        assert select.select([fd], [], [], 0.05)[0] == []
        q.send_bytes(b"mine")
        assert select.select([fd], [], [], 10)[0] == [fd]
        assert q.recv_bytes() == b"mine"  # no timeout: the fast path would not re-arm, so it is skipped
        assert select.select([fd], [], [], 0.05)[0] == []


# -- many producers and consumers ------------------------------------------------------------------

def _produce(url: str, tag: int, count: int, stops: int, seed: int) -> int:
    """Send ``count`` messages; tag 0 without a timeout (the channel's fast path), others with one."""
    rnd = random.Random(seed)
    timeout = None if tag == 0 else 30
    with ipcraft.queue(url) as q:
        for seq in range(count):
            q.send_bytes(_message(tag, seq, rnd.randrange(0, 200)), timeout=timeout)
        for _ in range(stops):
            q.send_bytes(b"stop", timeout=30)
    return count


def _consume(url: str, timeout: float | None) -> bytes:
    """Receive until a stop; return the (tag, seq) pairs packed, having checked every checksum."""
    got = bytearray()
    with ipcraft.queue(url) as q:
        while True:
            data = q.recv_bytes(timeout=timeout)
            if data == b"stop":
                return bytes(got)
            got += struct.pack("<II", *_check(data))


@pytest.mark.timeout(60)
def test_two_producers_two_consumers_deliver_each_message_exactly_once(ring_url: str) -> None:
    """2 producers x 2 consumers, 100 000 checksummed messages: each arrives intact at exactly one consumer."""
    per = 50_000
    with ipcraft.queue(ring_url, create=True, capacity=64 * 1024):
        consumers = [Child(_consume, ring_url, timeout) for timeout in (None, 30)]
        producers = [Child(_produce, ring_url, tag, per, 1, tag) for tag in range(2)]
        assert [p.result(50) for p in producers] == [per, per]
        pairs = [pair for c in consumers for pair in struct.iter_unpack("<II", c.result(50))]
    assert len(pairs) == 2 * per and set(pairs) == {(t, s) for t in range(2) for s in range(per)}


def _produce_forever(url: str, tag: int, sent_w: int, sizes: tuple[int, ...] = (0, 10, 3000, 60_000)) -> None:
    """Send checksummed messages of random ``sizes``; report each seq whose send returned on a pipe."""
    rnd = random.Random(tag)
    with ipcraft.queue(url) as q:
        for seq in range(10**9):
            q.send_bytes(_message(tag, seq, rnd.choice(sizes)), timeout=30)
            os.write(sent_w, _REPORT.pack(tag, seq, q.extra("recovered_locks")))


def _collect(q: Any, until: float, seen: dict[int, list[int]]) -> None:
    while time.monotonic() < until:
        try:
            tag, seq = _check(q.recv_bytes(timeout=0.01))
        except Timeout:
            continue
        seen.setdefault(tag, []).append(seq)


def _reported(r: int, takeovers: dict[int, int] | None = None) -> list[tuple[int, int]]:
    """The (tag, seq) pairs children reported so far; notes each child's lock takeovers."""
    data = b""
    while select.select([r], [], [], 0)[0]:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        data += chunk
    out = []
    for tag, seq, n in _REPORT.iter_unpack(data):
        out.append((tag, seq))
        if takeovers is not None:
            takeovers[tag] = max(takeovers.get(tag, 0), n)
    return out


@pytest.mark.timeout(90)
def test_producers_killed_at_random_moments_wedge_nobody(ring_url: str) -> None:
    """30 producers SIGKILLed at random moments (often mid-copy, holding the lock) while another keeps
    sending: no receive or send hangs, nothing torn or duplicated arrives, and every send that returned
    is delivered."""
    rnd = random.Random(7)
    seen: dict[int, list[int]] = {}
    sent: set[tuple[int, int]] = set()
    takeovers: dict[int, int] = {}
    r, w = os.pipe()
    big = (0, 100, 200_000, 1_000_000)  # big copies: the kill often lands while the lock is held
    with ipcraft.queue(ring_url, create=True, capacity=4 << 20) as q:
        survivor = Child(_produce_forever, ring_url, 0, w)
        try:
            for tag in range(1, 31):
                victim = Child(_produce_forever, ring_url, tag, w, big)
                # The random moment counts from the victim's first message, so that on a loaded
                # machine a victim is not killed before it was ever scheduled.
                started = time.monotonic() + 5
                while tag not in seen and time.monotonic() < started:
                    _collect(q, time.monotonic() + 0.01, seen)
                _collect(q, time.monotonic() + rnd.uniform(0.005, 0.05), seen)
                victim.kill()
                victim.wait(10)
                sent.update(_reported(r, takeovers))
            _collect(q, time.monotonic() + 0.1, seen)
        finally:
            survivor.kill()
            survivor.wait(10)
        sent.update(_reported(r, takeovers))
        _collect(q, time.monotonic() + 0.5, seen)
    os.close(r)
    os.close(w)
    for tag, seqs in seen.items():
        assert seqs == list(range(len(seqs))), f"producer {tag}: messages lost, reordered or duplicated"
    assert sent <= {(t, s) for t, seqs in seen.items() for s in seqs}, "a send that returned was lost"
    assert len(seen) > 20, "the victims hardly ever sent"
    print(f"producers' lock taken over from a killed holder {sum(takeovers.values())} times")


def _consume_reporting(url: str, got_w: int, ident: int) -> None:
    """Receive forever; report (ident, seq, takeovers) for each message on a pipe."""
    with ipcraft.queue(url) as q:
        while True:
            try:
                _, seq = _check(q.recv_bytes(timeout=30))
                os.write(got_w, _REPORT.pack(ident, seq, q.extra("recovered_locks")))
            except Timeout:
                pass


@pytest.mark.timeout(90)
def test_consumers_killed_at_random_moments_wedge_nobody(ring_url: str) -> None:
    """30 consumers SIGKILLed at random moments beside a live one: nothing is duplicated or torn, and each
    kill loses at most the one message that consumer had taken but not yet reported."""
    rnd = random.Random(11)
    r, w = os.pipe()
    got: list[tuple[int, int]] = []
    takeovers: dict[int, int] = {}
    seq = 0
    with ipcraft.queue(ring_url, create=True, capacity=4 << 20) as q:
        live = Child(_consume_reporting, ring_url, w, 0)
        try:
            for ident in range(1, 31):
                victim = Child(_consume_reporting, ring_url, w, ident)
                until = time.monotonic() + rnd.uniform(0.005, 0.05)
                while time.monotonic() < until:
                    q.send_bytes(_message(0, seq, rnd.choice((0, 100, 5000, 400_000))), timeout=10)
                    seq += 1
                victim.kill()
                victim.wait(10)
                got.extend(_reported(r, takeovers))
            deadline = time.monotonic() + 10
            while q.poll(0) and time.monotonic() < deadline:  # the live consumer drains the rest
                select.select([r], [], [], 0.05)
                got.extend(_reported(r, takeovers))
            time.sleep(0.2)  # and reports the last one it took
            got.extend(_reported(r, takeovers))
        finally:
            live.kill()
            live.wait(10)
        assert q.poll(0) is False, "messages were left in the queue"
        print(f"consumers' lock taken over from a killed holder {sum(takeovers.values())} times")
    os.close(r)
    os.close(w)
    seqs = [s for _, s in got]
    assert len(seqs) == len(set(seqs)), "a message was delivered twice"
    assert seq - 30 <= len(seqs) <= seq, f"{seq - len(seqs)} messages lost by 30 kills"


# -- file:// crash recovery ------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_file_queue_recovers_after_writers_are_killed_mid_write(file_url: str) -> None:
    """20 times: a writer is SIGKILLed at a random moment and every handle is closed; reopening recovers
    the queue, keeps every message whose send returned, and delivers nothing torn or twice."""
    rnd = random.Random(3)
    r, w = os.pipe()
    sent: set[tuple[int, int]] = set()
    seen: dict[int, list[int]] = {}
    ipcraft.queue(file_url, create=True, capacity=8 << 20).close()
    try:
        for tag in range(20):
            writer = Child(_produce_forever, file_url, tag, w, (0, 10, 3000, 20_000))
            time.sleep(rnd.uniform(0.005, 0.04))
            writer.kill()
            writer.wait(10)
            sent.update(_reported(r))
            with ipcraft.queue(file_url) as q:  # nobody else has it open: recovery runs
                assert q.extra("discarded_bytes") == 0
                while q.poll(0):
                    t, s = _check(q.recv_bytes(timeout=0))
                    seen.setdefault(t, []).append(s)
    finally:
        os.close(r)
        os.close(w)
        os.unlink(file_url.removeprefix("file://"))
    for tag, seqs in seen.items():
        assert seqs == list(range(len(seqs))), f"writer {tag}: messages lost, reordered or duplicated"
    assert sent <= {(t, s) for t, seqs in seen.items() for s in seqs}, "a send that returned was lost"


def _hold_lock_and_die(url: str) -> None:
    from ipcraft import _native

    class Lock(_native.PMutex):
        def _acquire_failed(self, rc: int, timeout: float | None) -> None:
            raise OSError(-rc, "lock")

    from ipcraft.primitives.mmap_file import MappedFile

    mf = MappedFile.open(url.removeprefix("file://"))
    lock = Lock()
    lock._attach(mf._mmap, _mpmc.OFF_CONSUMER_LOCK)
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_file_queue_reopened_after_a_lock_holder_died_works(file_url: str) -> None:
    """A process killed holding the consumers' lock of a file:// queue that nobody else has open: the next
    opener re-initialises the locks and the message it was guarding is still delivered."""
    with ipcraft.queue(file_url, create=True, capacity=8192) as q:
        q.send("guarded")
    Child(_hold_lock_and_die, file_url).wait(10)
    with ipcraft.queue(file_url) as q:
        assert q.recv(timeout=5) == "guarded"
        q.unlink()
