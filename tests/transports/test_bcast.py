"""bcast://: one-to-many broadcast over shared memory, with real processes (ipcraft.testing.Child).

Delivery to every subscriber in order (block mode), exact missed counts (drop mode), eviction of dead
and stopped subscribers, publishers killed mid-message, late joiners, latest(), zero copy that cannot
lie, the end of the stream, permissions and the select/epoll fd.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import struct
import time
import zlib
from collections.abc import Iterator

import pytest

import ipcraft
from ipcraft._rings import bcast as _bcast
from ipcraft.errors import (
    BufferTooSmall,
    ChannelClosed,
    InvalidEndpoint,
    LimitExceeded,
    MessagesMissed,
    MessageTooLarge,
    PeerVanished,
    SubscriberEvicted,
    Timeout,
)
from ipcraft.testing import Child, run_in_child, unique_name

_MSG = struct.Struct("<QI")  # sequence number, crc32 of the rest


def _message(i: int, size: int) -> bytes:
    body = (i.to_bytes(8, "little") * (size // 8 + 1))[:size]
    return _MSG.pack(i, zlib.crc32(body)) + body


def _check(msg: bytes) -> int:
    """The message's number; AssertionError if it is torn."""
    i, crc = _MSG.unpack_from(msg)
    assert zlib.crc32(msg[_MSG.size:]) == crc, f"message {i} is torn"
    return int(i)


@pytest.fixture()
def url() -> Iterator[str]:
    name = unique_name("bc")
    yield f"bcast://{name}"
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


def _wait_subscribers(pub: ipcraft.Publisher, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(s["state"] == "live" for s in pub.extra("subscribers")) < n:
        assert time.monotonic() < deadline, f"{n} subscribers did not join in {timeout} s"
        time.sleep(0.005)


def _drain(url: str, start: str = "next", delay: float = 0.0) -> dict[str, object]:
    """A subscriber process: receive until the end of the stream, checking every message."""
    got, missed_events, gaps = [], 0, 0
    with ipcraft.subscribe(url, start=start) as sub:
        while True:
            try:
                msg = sub.recv_bytes(timeout=30)
            except MessagesMissed as exc:
                missed_events += 1
                gaps += exc.missed
                continue
            except ChannelClosed as exc:
                ended = type(exc).__name__
                break
            got.append(_check(msg))
            if delay:
                time.sleep(delay)
        total_missed = sub.missed
    ordered = all(a < b for a, b in itertools.pairwise(got))
    skipped = sum(b - a - 1 for a, b in itertools.pairwise(got))
    return {"count": len(got), "first": got[0] if got else None, "last": got[-1] if got else None,
            "ordered": ordered, "skipped": skipped, "missed": total_missed, "signalled": gaps,
            "events": missed_events, "ended": ended}


# -- delivery ----------------------------------------------------------------------------------------------


def test_block_mode_one_publisher_four_subscribers_100k_messages(url: str) -> None:
    """Every one of 4 subscriber processes gets all 100,000 checksummed messages in order (block mode)."""
    n = 100_000
    with ipcraft.publish(url, on_slow="block", capacity=256 * 1024, slow_timeout=30) as pub:
        kids = [Child(_drain, url) for _ in range(4)]
        _wait_subscribers(pub, 4)
        for i in range(n):
            pub.send_bytes(_message(i, 8 + i % 120), timeout=30)
    for kid in kids:
        r = kid.result(timeout=60)
        assert r == {"count": n, "first": 0, "last": n - 1, "ordered": True, "skipped": 0, "missed": 0,
                     "signalled": 0, "events": 0, "ended": "ChannelClosed"}


def test_drop_mode_slow_subscriber_gets_an_exact_missed_count(url: str) -> None:
    """Drop mode: two prompt subscribers get everything; a slow one gets whole messages only, and the
    gaps in what it got equal exactly the missed counts it was told."""
    n, burst = 3000, 40
    with ipcraft.publish(url, capacity=16 * 1024) as pub:
        prompt = [Child(_drain, url) for _ in range(2)]
        slow = Child(_drain, url, delay=0.002)
        _wait_subscribers(pub, 3)
        fast_pids = {prompt[0].pid, prompt[1].pid}
        for i in range(n):
            pub.send_bytes(_message(i, 40 + i % 200))
            if i % burst == burst - 1:  # let the prompt ones catch up: the publisher itself never waits
                deadline = time.monotonic() + 20
                while any(s["lag_bytes"] for s in pub.extra("subscribers") if s["pid"] in fast_pids):
                    assert time.monotonic() < deadline
                    time.sleep(0.0005)
    for kid in prompt:
        r = kid.result(timeout=60)
        assert (r["count"], r["missed"], r["skipped"], r["ordered"]) == (n, 0, 0, True)
    r = slow.result(timeout=60)
    assert r["ordered"] and r["missed"] > 0 and r["events"] > 0
    assert r["skipped"] + (r["first"] or 0) + (n - 1 - (r["last"] or 0)) == r["missed"] == r["signalled"]
    assert r["count"] + r["missed"] == n


def _subscribe_and_hang(url: str) -> None:
    with ipcraft.subscribe(url):
        time.sleep(60)


def test_block_mode_sigkill_of_a_subscriber_never_holds_the_publisher(url: str) -> None:
    """A subscriber killed with SIGKILL is found dead (pid and start time) and evicted: the publisher,
    which would otherwise wait for it, proceeds well within slow_timeout."""
    with ipcraft.publish(url, on_slow="block", capacity=8192, slow_timeout=20) as pub:
        kid = Child(_subscribe_and_hang, url)
        _wait_subscribers(pub, 1)
        kid.kill()
        kid.wait()
        start = time.monotonic()
        for i in range(1000):  # about 10 times the ring
            pub.send_bytes(_message(i, 64), timeout=20)
        assert time.monotonic() - start < 10
        assert pub.extra("evicted") == 1


def test_block_mode_stopped_subscriber_is_evicted_and_told(url: str) -> None:
    """A subscriber stopped (SIGSTOP) for longer than slow_timeout is evicted; once it runs again its
    next read raises SubscriberEvicted with the exact number of messages it lost, then it goes on."""
    with ipcraft.publish(url, on_slow="block", capacity=8192, slow_timeout=0.3) as pub, \
            ipcraft.subscribe(url) as sub:
        pub.send_bytes(_message(0, 64))
        assert _check(sub.recv_bytes(timeout=5)) == 0
        # This process is the subscriber: it simply does not read while the publisher fills the ring.
        start = time.monotonic()
        for i in range(1, 500):
            pub.send_bytes(_message(i, 64), timeout=10)
        assert 0.3 <= time.monotonic() - start < 8
        with pytest.raises(SubscriberEvicted) as info:
            sub.recv_bytes(timeout=5)
        first = _check(sub.recv_bytes(timeout=5))
        assert info.value.missed == first - 1 == sub.missed
        assert [_check(sub.recv_bytes(timeout=5)) for _ in range(499 - first)] == list(range(first + 1, 500))


def _publish_half_then_hang(url: str, w: int) -> None:
    with ipcraft.publish(url) as pub, pub.send_view(1000) as view:
        view[:500] = b"\xee" * 500
        os.write(w, b"!")
        time.sleep(60)


def test_publisher_killed_mid_message_leaves_nothing_torn_and_others_continue(url: str) -> None:
    """A publisher killed while writing a message (holding the publishers' lock) publishes nothing of it;
    the kernel hands the lock on and the next publisher continues at once."""
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url) as sub:
        pub.send_bytes(_message(1, 100))
        r, w = os.pipe()
        kid = Child(_publish_half_then_hang, url, w)
        try:
            assert select.select([r], [], [], 20)[0], "the child never started its message"
            kid.kill()
            kid.wait()
        finally:
            os.close(r)
            os.close(w)
        pub.send_bytes(_message(2, 100), timeout=5)
        assert [_check(sub.recv_bytes(timeout=5)) for _ in range(2)] == [1, 2]
        assert not sub.poll(0.05)
        assert pub.extra("recovered_locks") == 1


def _publish_forever(url: str, start: int) -> None:
    with ipcraft.publish(url) as pub:
        i = start
        while True:
            pub.send_bytes(_message(i, 16 + i % 3000))
            i += 1


def test_publishers_killed_at_random_points_never_tear_a_message(url: str) -> None:
    """Publishers SIGKILLed at arbitrary instructions: subscribers only ever see whole messages."""
    with ipcraft.publish(url, capacity=1 << 20) as keeper, ipcraft.subscribe(url) as sub:
        seen = 0
        for round_ in range(4):
            kid = Child(_publish_forever, url, round_ * 10**9)
            deadline = time.monotonic() + 20
            while seen < (round_ + 1) * 200:
                assert time.monotonic() < deadline
                try:
                    _check(sub.recv_bytes(timeout=5))
                    seen += 1
                except MessagesMissed:
                    pass
            time.sleep(0.001 * round_)
            kid.kill()
            kid.wait()
        keeper.send_bytes(_message(7, 10), timeout=5)  # the lock is usable after every kill
        while True:
            try:
                if _check(sub.recv_bytes(timeout=5)) == 7:
                    break
            except MessagesMissed:
                pass


# -- the end of the stream ---------------------------------------------------------------------------------


def test_clean_close_of_the_last_publisher_is_end_of_stream_after_draining(url: str) -> None:
    with ipcraft.subscribe(url, create=True) as sub:
        pub = ipcraft.publish(url)
        for i in range(3):
            pub.send(i)
        pub.close()
        assert list(sub) == [0, 1, 2]
        with pytest.raises(ChannelClosed) as info:
            sub.recv(timeout=1)
        assert type(info.value) is ChannelClosed
        assert sub.poll(0)


def _publish_and_die(url: str) -> None:
    pub = ipcraft.publish(url)
    pub.send("last words")
    os.kill(os.getpid(), signal.SIGKILL)


def test_death_of_the_last_publisher_is_peer_vanished_after_draining(url: str) -> None:
    with ipcraft.subscribe(url, create=True) as sub:
        kid = Child(_publish_and_die, url)
        assert sub.recv(timeout=10) == "last words"
        with pytest.raises(PeerVanished):
            sub.recv(timeout=10)
        kid.wait()


def test_while_another_publisher_lives_the_stream_goes_on(url: str) -> None:
    with ipcraft.subscribe(url, create=True) as sub, ipcraft.publish(url) as survivor:
        kid = Child(_publish_and_die, url)
        assert sub.recv(timeout=10) == "last words"
        kid.wait()
        with pytest.raises(Timeout):
            sub.recv(timeout=0.6)  # longer than the dead-publisher check: still no end of stream
        survivor.send("still here")
        assert sub.recv(timeout=5) == "still here"


# -- late joiners and latest() ------------------------------------------------------------------------------


def test_late_joiners_start_next_latest_or_oldest(url: str) -> None:
    with ipcraft.publish(url) as pub:
        for i in range(10):
            pub.send(i)
        with ipcraft.subscribe(url, start="next") as nxt, ipcraft.subscribe(url, start="latest") as lat, \
                ipcraft.subscribe(url, start="oldest") as old:
            pub.send(10)
            assert nxt.recv(timeout=1) == 10
            assert [lat.recv(timeout=1) for _ in range(2)] == [9, 10]
            assert [old.recv(timeout=1) for _ in range(11)] == list(range(11))
            for s in (nxt, lat, old):
                assert not s.poll(0)


def test_oldest_is_the_ring_history(url: str) -> None:
    """start="oldest" begins at the oldest message still in the ring: the history is the capacity."""
    with ipcraft.publish(url, capacity=4096) as pub:
        for i in range(1000):
            pub.send_bytes(_message(i, 40))
        with ipcraft.subscribe(url, start="oldest") as sub:
            got = []
            while sub.poll(0):
                got.append(_check(sub.recv_bytes(timeout=1)))
            assert got == list(range(1000 - len(got), 1000)) and 40 < len(got) < 4096 // 64 + 1
            assert sub.missed == 0


def test_latest_returns_the_newest_without_consuming(url: str) -> None:
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url) as sub:
        with pytest.raises(Timeout):
            sub.latest()
        pub.send({"frame": 1})
        pub.send({"frame": 2})
        assert sub.latest() == {"frame": 2}
        assert sub.latest(timeout=1) == {"frame": 2}
        assert sub.recv(timeout=1) == {"frame": 1}


# -- zero copy -----------------------------------------------------------------------------------------------


def test_recv_view_overwritten_in_drop_mode_raises_on_exit_with_the_count(url: str) -> None:
    np = pytest.importorskip("numpy")
    with ipcraft.publish(url, capacity=4096) as pub, ipcraft.subscribe(url) as sub:
        pub.send_bytes(np.arange(16, dtype=np.int32))
        with sub.recv_view(timeout=1) as view:
            assert np.frombuffer(view, np.int32).tolist() == list(range(16))
        pub.send_bytes(b"x" * 64)
        with pytest.raises(MessagesMissed) as info, sub.recv_view(timeout=1) as view:
            for i in range(200):  # laps the record being looked at
                pub.send_bytes(_message(i, 40))
        assert info.value.missed == sub.missed > 0
        got = _check(sub.recv_bytes(timeout=1))
        assert info.value.missed == got + 1  # the lapped record itself, then messages 0 .. got - 1


def test_recv_view_pins_the_record_in_block_mode(url: str) -> None:
    with ipcraft.publish(url, on_slow="block", capacity=4096, slow_timeout=0) as pub, \
            ipcraft.subscribe(url) as sub:
        pub.send_bytes(b"pinned")
        with sub.recv_view(timeout=1) as view:
            with pytest.raises(Timeout):
                for _ in range(200):
                    pub.send_bytes(b"y" * 100, timeout=0.05)
            assert bytes(view) == b"pinned"
        assert sub.recv_bytes(timeout=1) == b"y" * 100


def test_send_view_and_numpy_arrays(url: str) -> None:
    np = pytest.importorskip("numpy")
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url) as sub:
        with pub.send_view(8) as buf:
            buf[:] = b"in place"
        with pytest.raises(RuntimeError), pub.send_view(4) as buf:
            buf[:] = b"nope"
            raise RuntimeError("abandoned")
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        pub.send(a)
        assert sub.recv_bytes(timeout=1) == b"in place"
        b = sub.recv(timeout=1)
        assert b.dtype == np.float32 and b.shape == (3, 4) and (a == b).all()
        assert not sub.poll(0)


# -- the surface -----------------------------------------------------------------------------------------------


def test_surface_limits_and_cleanup(url: str) -> None:
    name = url.removeprefix("bcast://")
    with ipcraft.publish(url, capacity=8192, max_subscribers=2) as pub:
        assert pub.owner and oct(os.stat(f"/dev/shm/{name}").st_mode & 0o777) == "0o600"
        with ipcraft.subscribe(url) as a, ipcraft.subscribe(url) as b:
            with pytest.raises(LimitExceeded):
                ipcraft.subscribe(url)
            with pytest.raises(MessageTooLarge, match="capacity"):
                pub.send_bytes(b"x" * 4096)
            pub.send_bytes(b"y" * (4096 - 16 - 8))  # the largest message
            buf = bytearray(10)
            with pytest.raises(BufferTooSmall) as info:
                a.recv_bytes_into(buf)
            assert info.value.data == b"y" * 4072
            assert b.recv_bytes_into(bytearray(5000), 1) == 4072
        with ipcraft.subscribe(url) as c:  # the slots were given back
            assert not c.owner
    assert not os.path.exists(f"/dev/shm/{name}")
    with pytest.raises(FileNotFoundError):
        ipcraft.subscribe(url)
    with pytest.raises(InvalidEndpoint):
        ipcraft.publish(f"ring://{name}")
    with pytest.raises(InvalidEndpoint):
        ipcraft.queue(url)
    with pytest.raises(InvalidEndpoint):
        ipcraft.subscribe(url, start="middle")


def test_fileno_is_readable_when_a_message_is_published(url: str) -> None:
    with ipcraft.publish(url) as pub, ipcraft.subscribe(url, wait="spin") as sub:
        fd = sub.fileno()
        assert not select.select([fd], [], [], 0.05)[0]
        pub.send("ping")
        assert select.select([fd], [], [], 5)[0]
        assert sub.recv(timeout=0) == "ping"
        with pytest.raises(Timeout):
            sub.recv(timeout=0)
        assert not select.select([fd], [], [], 0.05)[0]
        pub.send("pong")
        assert select.select([fd], [], [], 5)[0]


def _subscribe_as_nobody(url: str) -> str:
    os.setgid(65534)
    os.setuid(65534)
    try:
        ipcraft.subscribe(url)
    except PermissionError as exc:
        return f"refused errno {exc.errno}"
    return "opened"


def test_another_user_cannot_subscribe(url: str) -> None:
    with ipcraft.publish(url):
        assert run_in_child(_subscribe_as_nobody, url, timeout=20) == "refused errno 13"


def test_publisher_and_subscriber_have_no_public_constructor() -> None:
    with pytest.raises(TypeError):
        ipcraft.Publisher(None)
    with pytest.raises(TypeError):
        ipcraft.Subscriber(None)


def test_layout_constants_match_the_module() -> None:
    assert _bcast.max_message(4096) == 2048 - 16
    assert _bcast.data_offset(64) == 8192


# -- ipcraft ls / rm -----------------------------------------------------------------------------------------


def test_ls_shows_each_subscriber_pid_and_lag_and_rm_removes_the_ring(url: str) -> None:
    import json

    from click.testing import CliRunner

    from ipcraft._cli import cli

    name = url.removeprefix("bcast://")
    pub = ipcraft.publish(url, on_slow="block")
    try:
        with ipcraft.subscribe(url) as behind, ipcraft.subscribe(url) as prompt:
            for i in range(5):
                pub.send(i)
            for _ in range(5):
                prompt.recv(timeout=1)
            behind.recv(timeout=1)
            out = CliRunner().invoke(cli, ["ls", "--kind", "bcast", "--format", "json"], catch_exceptions=False)
            ring = next(o for o in json.loads(out.stdout) if o["name"] == f"/{name}")
            assert ring["details"]["on_slow"] == "block" and ring["details"]["publishers"] == [os.getpid()]
            lags = sorted((s["pid"], s["lag_messages"]) for s in ring["details"]["subscribers"])
            assert lags == [(os.getpid(), 0), (os.getpid(), 4)]
            table = CliRunner().invoke(cli, ["ls", "--kind", "bcast"], catch_exceptions=False).stdout
            assert f"{os.getpid()}:lag=4" in table and f"{os.getpid()}:lag=0" in table
        removed = CliRunner().invoke(cli, ["rm", "bcast", name], catch_exceptions=False)
        assert removed.exit_code == 0 and not os.path.exists(f"/dev/shm/{name}")
    finally:
        pub.close()


# -- interop: the layout as documented, read by a process that does not import ipcraft -------------------------

_PLAIN_READER = r'''
import mmap, os, struct, sys
fd = os.open("/dev/shm/" + sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
magic, version, flags, capacity, data = struct.unpack_from("<QIIQQ", m, 0)
assert magic == int.from_bytes(b"IPCRAFTB", "little") and version == 1, (magic, version)
head, intent, oldest, latest, next_seq = struct.unpack_from("<5Q", m, 192)
pos, out = oldest, []
while pos < head:
    seq, n, check = struct.unpack_from("<QII", m, data + pos % capacity)
    assert check == n ^ 0xFFFFFFFF
    if n == 0xFFFFFFFF:                       # a pad record: skip to the next lap
        pos = (pos // capacity + 1) * capacity
        continue
    magic_f, sid, fflags, length = struct.unpack_from("<BBHI", m, data + pos % capacity + 16)
    assert (magic_f, sid, fflags, length) == (0xA1, 0, 0, n - 8)
    start = data + pos % capacity + 24
    out.append("%d:%s" % (seq, m[start:start + length].decode()))
    pos += 16 + (n + 15) // 16 * 16
assert "ipcraft" not in sys.modules
print(" ".join(out), next_seq)
'''


def test_a_reader_that_does_not_import_ipcraft_follows_the_documented_layout(url: str) -> None:
    import subprocess
    import sys

    name = url.removeprefix("bcast://")
    with ipcraft.publish(url, capacity=4096) as pub:
        for i in range(200):  # several laps: pads, an oldest record past the start
            pub.send_bytes(f"m{i}".encode() * (1 + i % 40))
        out = subprocess.run([sys.executable, "-I", "-c", _PLAIN_READER, name], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    *records, next_seq = out
    seqs = [int(r.split(":")[0]) for r in records]
    assert int(next_seq) == 201 and seqs == list(range(seqs[0], 201)) and len(seqs) > 5
    assert all(r.split(":")[1] == f"m{s - 1}" * (1 + (s - 1) % 40) for r, s in zip(records, seqs, strict=True))
