"""What ipcraft's mq:// and sysvmq:// queues cost over a bare posix_ipc / sysv_ipc loop.

A 64-byte round trip: the pinger (pinned to CPU 0) sends on one queue and waits for the echo on a
second; the echoer (a forked process pinned to CPU 1) sends back what it receives.  Bare loops and
ipcraft loops run side by side in one process tree, interleaved round by round so that drift of a
shared VM hits both alike; the ratio is the median ipcraft round trip over the median bare one.

    python benchmarks/mq_overhead.py [--rounds 7] [--trips 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import posix_ipc
import sysv_ipc

import ipcraft
from ipcraft.testing import unique_key, unique_name

PAYLOAD = b"x" * 64
WARMUP = 200


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass  # fewer CPUs: run unpinned


Maker = Callable[[], tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]]


def _loops(made: list[Any], open_: Callable[[Any], Any], addresses: list[Any], send: str,
           recv: Callable[[Any], bytes], cleanup: Callable[[Any], None]
           ) -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]:
    """(ping, echo, cleanup) over two queues: ping(n) runs n round trips on the queues ``made`` here;
    echo(n), in the child, opens them by address (as an unrelated process would) and answers n."""

    def ping(n: int) -> None:
        out, back = getattr(made[0], send), made[1]
        for _ in range(n):
            out(PAYLOAD)
            recv(back)

    def echo(n: int) -> None:
        a, b = (open_(x) for x in addresses)
        out = getattr(b, send)
        for _ in range(n):
            out(recv(a))

    return ping, echo, lambda: [cleanup(q) for q in made] and None


def bare_posix() -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]:
    names = [f"/{unique_name('bp')}" for _ in range(2)]
    made = [posix_ipc.MessageQueue(n, posix_ipc.O_CREX, max_messages=10, max_message_size=128) for n in names]
    return _loops(made, posix_ipc.MessageQueue, names, "send", lambda q: q.receive()[0],
                  lambda q: (q.close(), q.unlink()))


def bare_sysv() -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]:
    keys = [unique_key() for _ in range(2)]
    made = [sysv_ipc.MessageQueue(k, sysv_ipc.IPC_CREX, 0o600) for k in keys]
    return _loops(made, sysv_ipc.MessageQueue, keys, "send", lambda q: q.receive()[0], lambda q: q.remove())


def _ipcraft(urls: list[str]) -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]:
    made = [ipcraft.queue(u, create=True) for u in urls]
    return _loops(made, ipcraft.queue, urls, "send_bytes", lambda q: q.recv_bytes(), lambda q: q.close())


def ipcraft_mq() -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]:
    return _ipcraft([f"mq://{unique_name('im')}?maxmsg=10&msgsize=128" for _ in range(2)])


def ipcraft_sysvmq() -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]:
    return _ipcraft([f"sysvmq://{unique_key()}" for _ in range(2)])


def one_round(maker: Maker, trips: int) -> float:
    """Microseconds per round trip, over ``trips`` round trips after a warm-up."""
    ping, echo, cleanup = maker()
    try:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _pin(1)
                echo(WARMUP + trips)
            except BaseException:
                code = 1
            os._exit(code)
        _pin(0)
        ping(WARMUP)
        t0 = time.perf_counter()
        ping(trips)
        elapsed = time.perf_counter() - t0
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError(f"the echo process failed (status {status})")
        return elapsed / trips * 1e6
    finally:
        cleanup()


PAIRS = {"mq://": (bare_posix, ipcraft_mq), "sysvmq://": (bare_sysv, ipcraft_sysvmq)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--trips", type=int, default=3000)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {s: {"bare": [], "ipcraft": []} for s in PAIRS}
    for r in range(args.rounds):
        for scheme, (bare, ours) in PAIRS.items():
            # Alternate which goes first, so neither always runs on a "warmer" machine.
            order = [("bare", bare), ("ipcraft", ours)]
            for label, maker in order if r % 2 == 0 else order[::-1]:
                results[scheme][label].append(one_round(maker, args.trips))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"64 B round trip, pinger on CPU 0, echoer on CPU 1, {args.rounds} rounds x {args.trips} trips "
          "(median, min-max, in us)")
    print(f"{'scheme':<10} {'bare':>22} {'ipcraft':>22} {'ratio':>7}")
    summary = {}
    for scheme, res in results.items():
        b, i = statistics.median(res["bare"]), statistics.median(res["ipcraft"])
        ratio = i / b
        # The per-round ratios show how much of the spread is the machine rather than the library.
        per_round = [x / y for x, y in zip(res["ipcraft"], res["bare"])]
        summary[scheme] = {"bare_us": b, "ipcraft_us": i, "ratio": ratio,
                           "ratio_per_round_median": statistics.median(per_round), "raw": res}
        print(f"{scheme:<10} {b:7.1f} ({min(res['bare']):.1f}-{max(res['bare']):.1f}) "
              f"{i:7.1f} ({min(res['ipcraft']):.1f}-{max(res['ipcraft']):.1f}) {ratio:7.2f}"
              f"   (median of per-round ratios {statistics.median(per_round):.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
