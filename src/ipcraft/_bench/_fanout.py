"""One-to-many subjects for ``ipcraft bench --subscribers N``: one publisher, N subscriber processes.

Each subject runs once per (number of subscribers, message size) in fresh processes: the publisher is
this process's child pinned to CPU 0, the subscribers are its children allowed on every other CPU
(all CPUs on a one-CPU machine).  Two phases:

* **latency**: the publisher sends numbered messages, paced 200 µs (+10 ns per byte) apart so that no
  message queues behind another, and notes ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for
  every process) just before each send call; each subscriber notes it just after the receive call
  returned that message.  Reported: p50 and p99 of arrival minus departure over every delivery.  The
  message is built before its departure is taken, so the latency is the send and receive calls and
  the hand-over between them, nothing of the bench's own: a time stamp packed into the message after
  the clock was read counted that packing (a ``struct.pack`` and a concatenation, 0.15-0.25 µs here)
  as latency.
* **throughput**: the publisher sends ``count`` messages back to back, then an end marker; the run
  lasts from the first send to the last subscriber's end marker.  Reported: aggregate deliveries/s
  (messages x subscribers / s) and MB/s, and how many messages the subscribers got.  bcast:// in block
  mode, iceoryx2 with RetryUntilDelivered and a queue each are lossless; pyzmq's PUB drops what a
  subscriber's queue has no room for, so its high-water marks are sized as in real use (about 16 MiB of
  messages, between 16 and 1000 messages) and what it delivered is counted, not assumed.

Before timing, a handshake: the publisher repeats a warm-up message until every subscriber has seen
one (a ZeroMQ SUB has then joined: its subscription reached the PUB).  A lossy subject's end marker is
repeated until every subscriber confirms it (the first may be dropped).  One deadline bounds each trial
(``timeout``): a stuck subject costs that and is reported as an error row.

Subjects: bcast:// (wait spin and block, ``on_slow="block"``), pyzmq PUB/SUB over ipc://, iceoryx2
pub/sub (busy polling), and a multiprocessing.Queue per subscriber.  A peer that does not import is
reported as not available.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ..testing import Child
from ._plan import format_size
from ._sweep import IceoryxFiles

_STAMP = struct.Struct("<cQ")  # kind (W warm-up, L latency, T throughput, E end), a latency message's number
_LATENCY = ord("L")
_PACE_NS = 200_000
_SETUP_TIMEOUT = 20.0

Send = Callable[[bytes], None]
Recv = Callable[[], bytes]


class FanoutSubject:
    """How to make one publisher and N subscribers of one mechanism."""

    name = ""
    module = ""  # a module that must import, else the subject is not available
    spins = False
    lossy = False  # may drop messages (the end marker is then repeated until confirmed)

    def unavailable(self) -> str | None:
        if not self.module:
            return None
        try:
            __import__(self.module)
        except ImportError as exc:
            return f"{self.module} is not installed ({exc})"
        return None

    def prepare(self, tmpdir: str, n: int, max_size: int) -> None:
        """Before forking: names, queues."""
        self.tmpdir, self.n, self.max_size = tmpdir, n, max_size

    def publisher(self) -> tuple[Send, Callable[[], None]]:
        raise NotImplementedError

    def subscriber(self, i: int) -> tuple[Recv, Callable[[], None]]:
        raise NotImplementedError

    def cleanup(self) -> None:
        """After the run, in the parent."""


class Bcast(FanoutSubject):
    def __init__(self, wait: str) -> None:
        self.wait = wait
        self.name = f"bcast:// {wait}"
        self.spins = wait == "spin"

    def prepare(self, tmpdir: str, n: int, max_size: int) -> None:
        super().prepare(tmpdir, n, max_size)
        import ipcraft

        self.url = f"bcast://ipcraft-bench-{os.getpid()}-{os.urandom(3).hex()}"
        # The parent owns the ring for the whole run (and removes it); children only open it.
        self._owner = ipcraft.publish(self.url, create=True, on_slow="block", slow_timeout=0,
                                      capacity=max(4 << 20, 16 * max_size), max_subscribers=max(n, 4))

    def publisher(self) -> tuple[Send, Callable[[], None]]:
        import ipcraft

        pub = ipcraft.publish(self.url, create=False, wait=self.wait)
        send = pub.send_bytes
        return send, pub.close

    def subscriber(self, i: int) -> tuple[Recv, Callable[[], None]]:
        import ipcraft

        sub = ipcraft.subscribe(self.url, wait=self.wait)
        return sub.recv_bytes, sub.close

    def cleanup(self) -> None:
        self._owner.close()


class ZmqPubSub(FanoutSubject):
    name = "pyzmq PUB/SUB ipc://"
    module = "zmq"
    lossy = True

    def prepare(self, tmpdir: str, n: int, max_size: int) -> None:
        super().prepare(tmpdir, n, max_size)
        self.url = f"ipc://{tmpdir}/pubsub.zmq"
        self.hwm = zmq_hwm(max_size)

    def publisher(self) -> tuple[Send, Callable[[], None]]:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.bind(self.url)

        def close() -> None:
            sock.close(linger=0)
            ctx.term()

        return sock.send, close

    def subscriber(self, i: int) -> tuple[Recv, Callable[[], None]]:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.url)

        def close() -> None:
            sock.close(linger=0)
            ctx.term()

        return sock.recv, close


class Iceoryx2PubSub(FanoutSubject):
    name = "iceoryx2 pub/sub (poll)"
    module = "iceoryx2"
    spins = True

    def prepare(self, tmpdir: str, n: int, max_size: int) -> None:
        super().prepare(tmpdir, n, max_size)
        self.service = f"ipcraft-bench-{os.getpid()}-{os.urandom(3).hex()}"
        self._files = IceoryxFiles()

    def _service(self) -> Any:
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Fatal)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        return (node.service_builder(iox2.ServiceName.new(self.service))
                .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                .enable_safe_overflow(False).subscriber_max_buffer_size(16).history_size(0)
                .max_subscribers(max(self.n, 2)).open_or_create())

    def publisher(self) -> tuple[Send, Callable[[], None]]:
        import iceoryx2 as iox2

        pub = (self._service().publisher_builder().initial_max_slice_len(self.max_size + _STAMP.size)
               .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
        memmove, loan = ctypes.memmove, pub.loan_slice_uninit

        def send(data: bytes) -> None:
            pub.update_connections()
            s = loan(len(data))
            memmove(s.payload_ptr, data, len(data))
            s.assume_init().send()

        return send, pub.delete

    def subscriber(self, i: int) -> tuple[Recv, Callable[[], None]]:
        sub = self._service().subscriber_builder().buffer_size(16).create()
        receive, string_at, yield_cpu = sub.receive, ctypes.string_at, os.sched_yield

        def recv() -> bytes:
            while True:
                s = receive()
                if s is not None:
                    data = string_at(s.payload_ptr, s.payload().len())
                    s.delete()
                    return data
                yield_cpu()  # polling: give the CPU to the publisher (2 cores, 4 processes)

        return recv, sub.delete

    def cleanup(self) -> None:
        self._files.cleanup()


class MpQueueEach(FanoutSubject):
    name = "mp.Queue per subscriber"

    def prepare(self, tmpdir: str, n: int, max_size: int) -> None:
        import multiprocessing

        super().prepare(tmpdir, n, max_size)
        self.queues: list[Any] = [multiprocessing.Queue() for _ in range(n)]

    def publisher(self) -> tuple[Send, Callable[[], None]]:
        puts = [q.put for q in self.queues]

        def send(data: bytes) -> None:
            for put in puts:
                put(data)

        def close() -> None:
            for q in self.queues:
                q.close()
                q.join_thread()

        return send, close

    def subscriber(self, i: int) -> tuple[Recv, Callable[[], None]]:
        return self.queues[i].get, lambda: None

    def cleanup(self) -> None:
        for q in self.queues:
            q.close()


def zmq_hwm(size: int) -> int:
    """pyzmq's SNDHWM/RCVHWM for messages of ``size`` bytes: about 16 MiB of them, 16 to 1000."""
    return max(16, min(1000, (16 << 20) // max(size, 1)))


def fanout_subjects(waits: tuple[str, ...]) -> list[FanoutSubject]:
    return [*(Bcast(w) for w in waits), ZmqPubSub(), Iceoryx2PubSub(), MpQueueEach()]


# -- the processes ----------------------------------------------------------------------------------------


def _pin(cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        pass


def _subscriber_main(subject: FanoutSubject, i: int, ready_w: int, count: int, lat_count: int) -> dict[str, Any]:
    cpus = os.sched_getaffinity(0)
    _pin(cpus - {0} or cpus)
    recv, close = subject.subscriber(i)
    try:
        os.write(ready_w, b"S")  # attached
        while True:  # warm-up: the publisher repeats W until every subscriber has seen one
            msg = recv()
            if msg[:1] == b"W":
                break
        os.write(ready_w, b"R")
        arrivals: list[tuple[int, int]] = []  # (latency message number, arrival ns)
        got = 0
        while True:
            msg = recv()
            if msg[0] == _LATENCY:  # (an int compare: no slice before the clock is read)
                arrivals.append((_STAMP.unpack_from(msg)[1], time.monotonic_ns()))
                continue
            kind = msg[:1]
            if kind == b"T":
                got += 1
            elif kind == b"E":
                end = time.monotonic_ns()
                os.write(ready_w, b"D")  # a lossy subject's publisher repeats E until every D came
                break
        return {"arrivals": arrivals, "count": got, "end_ns": end}
    finally:
        close()


def _wait_bytes(fd: int, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"the subscribers did not answer within {timeout} s")
        seen += len(os.read(fd, n - seen))


def _publisher_main(subject: FanoutSubject, ready_r: int, n: int, size: int, count: int,
                    lat_count: int) -> dict[str, Any]:
    _pin({0} & os.sched_getaffinity(0) or os.sched_getaffinity(0))
    send, close = subject.publisher()
    try:
        warm = _STAMP.pack(b"W", 0) + bytes(max(0, size - _STAMP.size))
        deadline = time.monotonic() + _SETUP_TIMEOUT
        seen = 0
        while seen < n:  # late joiners (zmq's subscription) see a W eventually
            send(warm)
            if select.select([ready_r], [], [], 0.001)[0]:
                seen += len(os.read(ready_r, n - seen))
            if time.monotonic() > deadline:
                raise TimeoutError("the subscribers never saw the warm-up messages")
        pad = bytes(max(0, size - _STAMP.size))
        pace = _PACE_NS + size * 10  # 1 MiB: about 10 ms apart, so no message queues behind another
        sent: list[int] = []
        for i in range(lat_count):
            msg = _STAMP.pack(b"L", i) + pad  # built before the clock is read
            t = time.monotonic_ns()
            send(msg)
            sent.append(t)
            while time.monotonic_ns() - t < pace:
                pass
        body = _STAMP.pack(b"T", 0) + pad
        start = time.monotonic_ns()
        for _ in range(count):
            send(body)
        end = _STAMP.pack(b"E", 0) + pad
        send(end)
        if subject.lossy:  # the first end marker may have been dropped: repeat it until confirmed
            deadline = time.monotonic() + _SETUP_TIMEOUT
            seen = 0
            while seen < n and time.monotonic() < deadline:
                if select.select([ready_r], [], [], 0.001)[0]:
                    seen += len(os.read(ready_r, n - seen))
                else:
                    send(end)
        return {"start_ns": start, "sent_ns": sent}
    finally:
        close()


def _pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0 if s else float("nan")


def run_one(subject: FanoutSubject, n: int, size: int, count: int, lat_count: int, timeout: float) -> dict[str, Any]:
    """One subject with ``n`` subscribers at ``size`` bytes: latency p50/p99 (µs), deliveries/s, MB/s."""
    tmpdir = tempfile.mkdtemp(prefix="ipcraft-fanout-", dir="/tmp")
    size = max(size, _STAMP.size)
    subject.prepare(tmpdir, n, size)
    r, w = os.pipe()
    subs: list[Child] = []
    pub: Child | None = None
    try:
        deadline = time.monotonic() + timeout  # one deadline for the whole trial
        subs = [Child(_subscriber_main, subject, i, w, count, lat_count) for i in range(n)]
        _wait_bytes(r, n, min(_SETUP_TIMEOUT, timeout))
        pub = Child(_publisher_main, subject, r, n, size, count, lat_count)
        p = pub.result(max(0.1, deadline - time.monotonic()))
        results = [c.result(max(0.1, deadline - time.monotonic())) for c in subs]
    finally:
        for c in [*subs, *([pub] if pub else [])]:
            try:
                c.kill()
                c.wait(1)
            except Exception:  # noqa: BLE001 - reaped already
                pass
        os.close(r)
        os.close(w)
        subject.cleanup()
        shutil.rmtree(tmpdir, ignore_errors=True)
    sent = p["sent_ns"]
    lat = [arrived - sent[i] for res in results for i, arrived in res["arrivals"] if 0 <= i < len(sent)]
    seconds = (max(res["end_ns"] for res in results) - p["start_ns"]) / 1e9
    delivered = sum(res["count"] for res in results)
    return {"subject": subject.name, "subscribers": n, "size": size, "status": "ok",
            "latency_us": {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99)},
            "deliveries_per_s": delivered / seconds, "mb_per_s": delivered * size / seconds / 1e6,
            "delivered": delivered, "expected": n * count, "seconds": seconds}


def counts_for(size: int, full: bool) -> tuple[int, int]:
    """(throughput messages, latency messages) for a message size."""
    scale = 5 if full else 1
    if size >= 1 << 20:
        return 200 * scale, 100 * scale
    if size >= 64 << 10:
        return 2000 * scale, 500 * scale
    return 100_000 * scale, 2000 * scale


def run(subjects: list[FanoutSubject], subscriber_counts: tuple[int, ...], sizes: tuple[int, ...], full: bool,
        timeout: float, progress: Callable[[str], None] | None = None,
        count: int | None = None) -> list[dict[str, Any]]:
    """Every subject x subscriber count x size; a subject that fails is reported, not raised.  ``count``
    overrides the number of throughput messages (and caps the latency ones)."""
    out: list[dict[str, Any]] = []
    for subject in subjects:
        why = subject.unavailable()
        for n in subscriber_counts:
            for size in sizes:
                if why is not None:
                    out.append({"subject": subject.name, "subscribers": n, "size": size, "status": "unavailable",
                                "reason": why})
                    continue
                if progress:
                    progress(f"{subject.name} x{n} {format_size(size)}")
                msgs, lat_count = counts_for(size, full)
                if count is not None:
                    msgs, lat_count = count, min(lat_count, count)
                try:
                    out.append(run_one(subject, n, size, msgs, lat_count, timeout))
                except Exception as exc:  # noqa: BLE001 - one failed subject must not end the run
                    out.append({"subject": subject.name, "subscribers": n, "size": size, "status": "error",
                                "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    return out
