"""What ipcraft's mq:// and sysvmq:// queues cost over a bare posix_ipc / sysv_ipc loop.

A 64-byte round trip: the pinger (pinned to CPU 0) sends on one queue and waits for the echo on a
second; the echoer (a forked process pinned to CPU 1) sends back what it receives.  Bare and ipcraft
loops run side by side in one run, interleaved round by round (and alternating which goes first) so
that drift of a shared machine hits both alike.  Reported per scheme: the median round trip of
each, their ratio, and the CPU time both processes spend per round trip (user + system), which a
busy machine disturbs less than the wall-clock time.

``--poll-cost`` also measures what a System V receive with a timeout (which polls) costs while it
waits: how late ``recv(timeout=0.5)`` returns and the share of a core it burns.

    python benchmarks/mq_overhead.py [--rounds 9] [--trips 2000] [--poll-cost] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import posix_ipc
import sysv_ipc

import ipcraft
from ipcraft.primitives.sysv_mq import SysVMessageQueue
from ipcraft.testing import unique_key, unique_name

PAYLOAD = b"x" * 64
WARMUP = 200

Ping = Callable[[int], None]
Echo = Callable[[int, int], float]
Loops = tuple[Ping, Echo, Callable[[], None]]


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass  # fewer CPUs: run unpinned


def _loops(made: list[Any], open_: Callable[[Any], Any], addresses: list[Any], send: str,
           recv: Callable[[Any], bytes], cleanup: Callable[[Any], None]) -> Loops:
    """(ping, echo, cleanup) over two queues: ping(n) runs n round trips on the queues ``made`` here;
    echo(warm, n), in the child, opens them by address (as an unrelated process would), answers
    warm + n and returns the CPU seconds the last n took."""

    def ping(n: int) -> None:
        out, back = getattr(made[0], send), made[1]
        for _ in range(n):
            out(PAYLOAD)
            recv(back)

    def echo(warm: int, n: int) -> float:
        a, b = (open_(x) for x in addresses)
        out = getattr(b, send)
        for _ in range(warm):
            out(recv(a))
        c0 = time.process_time()
        for _ in range(n):
            out(recv(a))
        return time.process_time() - c0

    def close_all() -> None:
        for q in made:
            cleanup(q)
    return ping, echo, close_all


def bare_posix() -> Loops:
    names = [f"/{unique_name('bp')}" for _ in range(2)]
    made = [posix_ipc.MessageQueue(n, posix_ipc.O_CREX, max_messages=10, max_message_size=128) for n in names]
    return _loops(made, posix_ipc.MessageQueue, names, "send", lambda q: q.receive()[0],
                  lambda q: (q.close(), q.unlink()))


def bare_sysv() -> Loops:
    keys = [unique_key() for _ in range(2)]
    made = [sysv_ipc.MessageQueue(k, sysv_ipc.IPC_CREX, 0o600) for k in keys]
    return _loops(made, sysv_ipc.MessageQueue, keys, "send", lambda q: q.receive()[0], lambda q: q.remove())


def _ipcraft(urls: list[str]) -> Loops:
    made = [ipcraft.queue(u, create=True) for u in urls]
    return _loops(made, ipcraft.queue, urls, "send_bytes", lambda q: q.recv_bytes(), lambda q: q.close())


def ipcraft_mq() -> Loops:
    return _ipcraft([f"mq://{unique_name('im')}?maxmsg=10&msgsize=128" for _ in range(2)])


def ipcraft_sysvmq() -> Loops:
    return _ipcraft([f"sysvmq://{unique_key()}" for _ in range(2)])


def one_round(maker: Callable[[], Loops], trips: int) -> tuple[float, float]:
    """(wall, cpu) microseconds per round trip over ``trips`` round trips after a warm-up; cpu
    counts both processes."""
    ping, echo, cleanup = maker()
    r, w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(r)
                _pin(1)
                os.write(w, struct.pack("d", echo(WARMUP, trips)))
            except BaseException:  # noqa: BLE001 - a forked child must exit, never return into the parent's code
                code = 1
            os._exit(code)
        os.close(w)
        _pin(0)
        ping(WARMUP)
        t0, c0 = time.perf_counter(), time.process_time()
        ping(trips)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        child_cpu = struct.unpack("d", os.read(r, 8))[0]
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError(f"the echo process failed (status {status})")
        return elapsed / trips * 1e6, (cpu + child_cpu) / trips * 1e6
    finally:
        os.close(r)
        cleanup()


def poll_cost(waits: int = 6, timeout: float = 0.5) -> dict[str, float]:
    """Lateness (ms) and CPU share (%) of SysVMessageQueue.recv(timeout=0.5) on an empty queue."""
    late, share = [], []
    with SysVMessageQueue.create(unique_key()) as q:
        for _ in range(waits):
            t0, c0 = time.monotonic(), time.process_time()
            try:
                q.recv(timeout=timeout)
            except ipcraft.Timeout:
                pass
            wall = time.monotonic() - t0
            late.append((wall - timeout) * 1e3)
            share.append((time.process_time() - c0) / wall * 100)
    return {"late_ms_median": statistics.median(late), "late_ms_max": max(late),
            "cpu_percent_median": statistics.median(share), "cpu_percent_max": max(share)}


PAIRS = {"mq://": (bare_posix, ipcraft_mq), "sysvmq://": (bare_sysv, ipcraft_sysvmq)}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--trips", type=int, default=2000)
    ap.add_argument("--poll-cost", action="store_true", help="also measure a polled System V wait")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    wall: dict[str, dict[str, list[float]]] = {s: {"bare": [], "ipcraft": []} for s in PAIRS}
    cpu: dict[str, dict[str, list[float]]] = {s: {"bare": [], "ipcraft": []} for s in PAIRS}
    for r in range(args.rounds):
        for scheme, (bare, ours) in PAIRS.items():
            order = [("bare", bare), ("ipcraft", ours)]
            for label, maker in order if r % 2 == 0 else order[::-1]:
                w, c = one_round(maker, args.trips)
                wall[scheme][label].append(w)
                cpu[scheme][label].append(c)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"64 B round trip, pinger on CPU 0, echoer on CPU 1, {args.rounds} rounds x {args.trips} trips, "
          f"load average {load:.2f} (medians in us; CPU = both processes)")
    print(f"{'scheme':<10} {'bare':>8} {'ipcraft':>8} {'ratio':>6} {'per-round':>10}   "
          f"{'CPU bare':>8} {'CPU ipcraft':>11} {'CPU ratio':>9}")
    summary: dict[str, Any] = {"load_average": load}
    for scheme in PAIRS:
        wb, wi = statistics.median(wall[scheme]["bare"]), statistics.median(wall[scheme]["ipcraft"])
        cb, ci = statistics.median(cpu[scheme]["bare"]), statistics.median(cpu[scheme]["ipcraft"])
        # Ratios within a round cancel the drift between rounds.
        per_round = statistics.median(i / b for i, b in zip(wall[scheme]["ipcraft"], wall[scheme]["bare"], strict=True))
        summary[scheme] = {"bare_us": wb, "ipcraft_us": wi, "ratio": wi / wb, "ratio_per_round": per_round,
                           "cpu_bare_us": cb, "cpu_ipcraft_us": ci, "cpu_ratio": ci / cb,
                           "raw_wall": wall[scheme], "raw_cpu": cpu[scheme]}
        print(f"{scheme:<10} {wb:8.1f} {wi:8.1f} {wi / wb:6.2f} {per_round:10.2f}   "
              f"{cb:8.1f} {ci:11.1f} {ci / cb:9.2f}")
    if args.poll_cost:
        pc = poll_cost()
        summary["sysv_polled_wait"] = pc
        print(f"SysVMessageQueue.recv(timeout=0.5) on an empty queue: returns {pc['late_ms_median']:.2f} ms "
              f"late (max {pc['late_ms_max']:.2f}), burns {pc['cpu_percent_median']:.2f} % of a core "
              f"(max {pc['cpu_percent_max']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
