"""Measure shm:// against unix:// between two processes pinned to different cores.

    python benchmarks/bench_shm.py [--reps 5] [--quick] [--only name,name]

Every 1 MiB ``bytes`` a receiver allocates can cost ~480 page faults (about 1.3 ms here) when glibc
trims the heap top after each free; ``MALLOC_TOP_PAD_=16777216`` in the environment stops that for
every mechanism alike, so run both ways and say which.

Every figure is the median over ``--reps`` fresh process pairs (the machine is shared).  Round trips:
median of per-iteration perf_counter_ns.  One-way: the receiver's time from the first to the last
message.  Idle: CPU time (user+sys) of a receiver blocked in recv() for 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import ipcraft
from ipcraft.testing import Child, unique_name

MiB = 1 << 20


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def _pair(url: str, server_fn, client_fn, **opts):
    """Run server_fn(channel) in a child pinned to CPU 1 and client_fn(channel) here on CPU 0."""
    lst = ipcraft.listen(url, **opts)

    def serve():
        _pin(1)
        with lst.accept(10) as ch:
            return server_fn(ch)

    child = Child(serve)
    lst.close()
    _pin(0)
    try:
        with ipcraft.connect(url, timeout=10, **opts) as ch:
            mine = client_fn(ch)
        theirs = child.result(120)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return mine, theirs


def _echo(n):
    def serve(ch):
        for _ in range(n):
            ch.send_bytes(ch.recv_bytes())
    return serve


def _echo_views(n):
    def serve(ch):
        for _ in range(n):
            with ch.recv_view() as v, ch.send_view(len(v)) as w:
                w[:] = v
    return serve


def rtt(url: str, size: int, n: int, zero_copy: bool = False, **opts) -> float:
    msg = os.urandom(size)

    def client(ch):
        times = []
        pc = time.perf_counter_ns
        for _ in range(n):
            t0 = pc()
            if zero_copy:
                with ch.send_view(size) as w:
                    w[:] = msg
                with ch.recv_view():
                    pass
            else:
                ch.send_bytes(msg)
                ch.recv_bytes()
            times.append(pc() - t0)
        return statistics.median(times[n // 10:]) / 1000

    return _pair(url, _echo_views(n) if zero_copy else _echo(n), client, **opts)[0]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


CPU_NS: dict[str, list[float]] = {}


def oneway(url: str, size: int, n: int, zero_copy: bool = False, label: str = "", **opts) -> float:
    """Messages per second, the receiver's clock from first to last message.  Also records each
    side's CPU time per message (ns) under ``label`` in CPU_NS."""
    msg = os.urandom(size)

    def receiver(ch):
        ch.recv_bytes()  # the first message starts the clock
        t0, c0 = time.perf_counter(), _cpu()
        if zero_copy:
            for _ in range(n - 1):
                with ch.recv_view():
                    pass
        else:
            rb = ch.recv_bytes
            for _ in range(n - 1):
                rb()
        return (n - 1) / (time.perf_counter() - t0), (_cpu() - c0) / (n - 1) * 1e9

    def sender(ch):
        c0 = _cpu()
        if zero_copy:
            for _ in range(n):
                with ch.send_view(size) as v:
                    v[:] = msg
        else:
            sb = ch.send_bytes
            for _ in range(n):
                sb(msg)
        cpu = (_cpu() - c0) / n * 1e9
        ch.recv_bytes()  # wait until the receiver is done before closing
        return cpu

    def receiver_then_ack(ch):
        r = receiver(ch)
        ch.send_bytes(b"done")
        return r

    send_cpu, (rate, recv_cpu) = _pair(url, receiver_then_ack, sender, **opts)
    if label:
        CPU_NS.setdefault(label + "_send_cpu_ns", []).append(send_cpu)
        CPU_NS.setdefault(label + "_recv_cpu_ns", []).append(recv_cpu)
    return rate


def idle_cpu(url: str, seconds: float = 5.0, **opts) -> float:
    """Percent of one core used by a receiver blocked in recv() for ``seconds``."""
    def receiver(ch):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        ch.recv_bytes()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return 100 * cpu / wall

    def sender(ch):
        time.sleep(seconds)
        ch.send_bytes(b"wake")

    return _pair(url, receiver, sender, **opts)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    n_small = 5000 if args.quick else 20000
    n_tp = 100_000 if args.quick else 300_000
    n_big = 300 if args.quick else 2000
    shm = lambda: f"shm://{unique_name('b')}"  # noqa: E731
    unix = lambda: f"unix:@{unique_name('b')}"  # noqa: E731
    cases = {
        "rtt64_spin_us": lambda: rtt(shm(), 64, n_small, wait="spin"),
        "rtt64_block_us": lambda: rtt(shm(), 64, n_small, wait="block"),
        "rtt64_unix_us": lambda: rtt(unix(), 64, n_small // 4),
        "oneway64_Mmsg_s": lambda: oneway(shm(), 64, n_tp, label="oneway64") / 1e6,
        "oneway64_spin_Mmsg_s": lambda: oneway(shm(), 64, n_tp, label="oneway64_spin", wait="spin") / 1e6,
        "oneway64_unix_Mmsg_s": lambda: oneway(unix(), 64, n_tp // 4, label="oneway64_unix") / 1e6,
        "oneway1M_copy_GB_s": lambda: oneway(shm(), MiB, n_big, label="oneway1M") * MiB / 1e9,
        "oneway1M_zero_copy_GB_s": lambda: oneway(shm(), MiB, n_big, zero_copy=True,
                                                  label="oneway1M_zero_copy") * MiB / 1e9,
        "rtt1M_shm_us": lambda: rtt(shm(), MiB, n_big // 2),
        "rtt1M_unix_us": lambda: rtt(unix(), MiB, n_big // 2),
        "rtt1M_shm_zero_copy_us": lambda: rtt(shm(), MiB, n_big // 2, zero_copy=True),
        "idle5s_cpu_percent": lambda: idle_cpu(shm()),
    }
    only = set(args.only.split(",")) if args.only else set(cases)
    results: dict[str, list[float]] = {k: [] for k in cases if k in only}
    for rep in range(args.reps if not args.quick else min(args.reps, 3)):
        for name in results:
            if name == "idle5s_cpu_percent" and rep >= 3:
                continue
            results[name].append(cases[name]())
            print(f"rep {rep} {name}: {results[name][-1]:.3f}", file=sys.stderr, flush=True)
    results.update(CPU_NS)
    summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
               for k, v in results.items() if v}
    for k, v in summary.items():
        print(f"{k:28s} median {v['median']:10.3f}   (min {v['min']:.3f}, max {v['max']:.3f}, n={len(v['runs'])})")
    if "rtt1M_shm_us" in summary and "rtt1M_unix_us" in summary:
        print(f"1 MiB RTT shm/unix ratio: {summary['rtt1M_shm_us']['median'] / summary['rtt1M_unix_us']['median']:.2f}")
    json.dump(summary, open(os.environ.get("BENCH_JSON", "/tmp/bench_shm.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
