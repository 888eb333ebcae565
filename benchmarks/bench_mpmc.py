"""Measure ring:// (and file://) with 1 producer + 1 consumer and with 2 producers x 2 consumers.

    python benchmarks/bench_mpmc.py [--reps 3] [--n 200000] [--quick]

``ipcraft bench`` covers ring:// and file:// 1+1 like every scheme; this adds what it cannot: several
producers and consumers on one queue.  Every figure is the median over ``--reps`` fresh runs.

* one-way msg/s: producers send N messages in all (64 B, send_bytes), consumers receive them
  (recv_bytes); time from the start signal to the last consumer's last message.  1+1 pins the producer
  to CPU 0 and the consumer to CPU 1; 2x2 runs 4 processes on the 2 CPUs unpinned.
* round trip: 1+1 is a ping-pong over two queues (request, reply).  2x2 is a worker pool: 2 clients put
  requests into one shared queue, 2 servers take them and answer into the client's own reply queue;
  median of every client's per-request times.
* 1 MiB one-way throughput, 1+1 (GB/s = 10^9 bytes/s), copying recv_bytes.
* idle: CPU time of a consumer blocked 5 s in recv on an empty queue (wait=block), % of one core.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import ipcraft
from ipcraft.errors import Timeout
from ipcraft.testing import Child, unique_name

MiB = 1 << 20
STOP = b"stop"


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _go(r: int) -> None:
    os.read(r, 1)


def _producer(url: str, count: int, size: int, go: int, cpu: int | None, stops: int) -> int:
    _pin(cpu)
    msg = os.urandom(size)  # not bytes(size): a calloc'd zero page would flatter big copies
    with ipcraft.queue(url) as q:
        _go(go)
        for _ in range(count):
            q.send_bytes(msg)
        for _ in range(stops):
            q.send_bytes(STOP)
    return count


def _consumer(url: str, go: int, cpu: int | None) -> tuple[int, int]:
    """Receive until STOP; return (messages, monotonic ns of the last one)."""
    _pin(cpu)
    n = 0
    with ipcraft.queue(url) as q:
        _go(go)
        while q.recv_bytes() != STOP:
            n += 1
    return n, time.monotonic_ns()


def oneway(wait: str, producers: int, consumers: int, total: int, size: int) -> float:
    """Messages per second for ``total`` messages of ``size`` bytes; returns msg/s."""
    url = f"ring://{unique_name('bench')}"
    pin = producers == consumers == 1
    with ipcraft.queue(url, create=True, wait=wait, capacity=max(4 * MiB, 4 * size)):
        r, w = os.pipe()
        cons = [Child(_consumer, url + f"?wait={wait}", r, 1 if pin else None) for _ in range(consumers)]
        stops = [consumers // producers + (i < consumers % producers) for i in range(producers)]
        prods = [Child(_producer, url + f"?wait={wait}", total // producers, size, r, 0 if pin else None, s)
                 for s in stops]
        time.sleep(0.3)  # everyone attached and waiting for the start signal
        start = time.monotonic_ns()
        os.write(w, b"g" * (producers + consumers))
        for p in prods:
            p.result(300)
        got = [c.result(300) for c in cons]
        os.close(r)
        os.close(w)
    assert sum(n for n, _ in got) == total
    return total / ((max(t for _, t in got) - start) / 1e9)


def _server(req: str, replies: list[str], wait: str, cpu: int | None) -> int:
    _pin(cpu)
    outs = [ipcraft.queue(u, wait=wait) for u in replies]
    n = 0
    with ipcraft.queue(req, wait=wait) as q:
        while True:
            data = q.recv_bytes()
            if data == STOP:
                break
            outs[data[0]].send_bytes(data)
            n += 1
    for o in outs:
        o.close()
    return n


def _client(ident: int, req: str, reply: str, wait: str, count: int, size: int, go: int,
            cpu: int | None) -> list[int]:
    _pin(cpu)
    msg = bytes([ident]) + os.urandom(size - 1)
    times = []
    with ipcraft.queue(req, wait=wait) as out, ipcraft.queue(reply, wait=wait) as back:
        _go(go)
        for _ in range(count):
            t = time.perf_counter_ns()
            out.send_bytes(msg)
            back.recv_bytes()
            times.append(time.perf_counter_ns() - t)
    return times[count // 10:]


def round_trip(wait: str, pairs: int, count: int, size: int) -> float:
    """Median round trip in microseconds, ``pairs`` clients and ``pairs`` servers."""
    req = f"ring://{unique_name('req')}"
    replies = [f"ring://{unique_name('rep')}" for _ in range(pairs)]
    owned = [ipcraft.queue(u, create=True, wait=wait) for u in [req, *replies]]
    try:
        r, w = os.pipe()
        pin = pairs == 1
        servers = [Child(_server, req, replies, wait, 1 if pin else None) for _ in range(pairs)]
        clients = [Child(_client, i, req, replies[i], wait, count, size, r, 0 if pin else None)
                   for i in range(pairs)]
        time.sleep(0.3)
        os.write(w, b"g" * pairs)
        times = [t for c in clients for t in c.result(300)]
        for _ in servers:
            owned[0].send_bytes(STOP)
        for s in servers:
            s.result(60)
        os.close(r)
        os.close(w)
    finally:
        for q in owned:
            q.close()
    return statistics.median(times) / 1000


def _idle(url: str, seconds: float) -> float:
    with ipcraft.queue(url) as q:
        before = resource.getrusage(resource.RUSAGE_SELF)
        try:
            q.recv(timeout=seconds)
        except Timeout:
            pass
        after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds * 100


def idle_cpu(seconds: float) -> float:
    url = f"ring://{unique_name('idle')}"
    with ipcraft.queue(url, create=True):
        return float(Child(_idle, url, seconds).result(seconds + 30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=200_000, help="64 B messages per one-way run")
    ap.add_argument("--quick", action="store_true", help="fewer messages, one repetition")
    args = ap.parse_args()
    reps, n = (1, 50_000) if args.quick else (args.reps, args.n)
    rt_count = max(2000, n // 20)

    def med(fn, *a: object) -> float:
        return statistics.median(fn(*a) for _ in range(reps))

    print(f"ring://, median of {reps} runs, {os.cpu_count()} CPUs")
    for wait in ("spin", "block"):
        for p in (1, 2):
            rate = med(oneway, wait, p, p, n, 64)
            rtt = med(round_trip, wait, p, rt_count, 64)
            print(f"  wait={wait:<5} {p}x{p}  64 B one-way {rate / 1e6:6.3f} M msg/s   round trip p50 {rtt:7.2f} us",
                  flush=True)
        big = med(oneway, wait, 1, 1, max(200, n // 500), MiB)
        print(f"  wait={wait:<5} 1x1  1 MiB one-way {big * MiB / 1e9:6.2f} GB/s", flush=True)
    print(f"  idle consumer (wait=block, 5 s): {idle_cpu(5.0):.2f} % of a core")


if __name__ == "__main__":
    main()
