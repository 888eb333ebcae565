"""Uncontended acquire+release: SharedMutex vs multiprocessing.Lock (and threading.Lock), one run.

    python benchmarks/mutex_overhead.py [--rounds 200000] [--repeat 25]

Each figure is the best of ``--repeat`` timed loops of ``--rounds`` iterations, every case interleaved
in each repeat (the minimum is the least disturbed by other processes on the machine), in nanoseconds
per acquire+release pair, for two spellings: explicit ``lock.acquire(); lock.release()`` and
``with lock: pass``.  The target in issue 5 is SharedMutex <= 0.5x multiprocessing.Lock.

Where the time goes (measured in C on the same machine): glibc's robust, error-checking,
process-shared pthread_mutex_trylock+unlock alone costs ~35-45 ns, while multiprocessing.Lock's
sem_trywait+sem_getvalue+sem_post costs ~25-35 ns; SharedMutex wins back the difference by entering
no Python code (acquire/release are C methods that keep the mutex pointer).  The robust list
bookkeeping that makes the mutex survive its owner's death is what the explicit spelling pays for.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import threading
import time
from typing import Any

from ipcraft.primitives.sync import SharedMutex


def explicit(lock: Any, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        lock.acquire()
        lock.release()
    return time.perf_counter() - start


def with_statement(lock: Any, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        with lock:
            pass
    return time.perf_counter() - start


def empty_loop(_lock: Any, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()

    buf = mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED)
    mutex = SharedMutex.create(buf, 0)
    locks = {
        "SharedMutex": mutex,
        "multiprocessing.Lock": multiprocessing.Lock(),
        "threading.Lock": threading.Lock(),
    }
    spellings = {"acquire(); release()": explicit, "with lock:": with_statement}
    # Interleave every case in each repeat, so that load from other processes hits all alike.
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for case in [("empty loop", "")] + [(n, sp) for sp in spellings for n in locks]:
            fn = empty_loop if case[0] == "empty loop" else spellings[case[1]]
            ns = fn(locks.get(case[0]), args.rounds) / args.rounds * 1e9
            best[case] = min(ns, best.get(case, ns))
    print(f"ns per acquire+release, best of {args.repeat} interleaved runs of {args.rounds:,} "
          f"(empty loop: {best['empty loop', '']:.1f} ns, included below)")
    for name, spelling in best:
        if spelling:
            print(f"  {spelling:22} {name:22} {best[name, spelling]:7.1f}")
    for spelling in spellings:
        ratio = best["SharedMutex", spelling] / best["multiprocessing.Lock", spelling]
        verdict = "meets" if ratio <= 0.5 else "misses"
        print(f"SharedMutex / multiprocessing.Lock, {spelling:22} {ratio:.2f}x ({verdict} the 0.5x target)")
    mutex.close()
    buf.close()


if __name__ == "__main__":
    main()
