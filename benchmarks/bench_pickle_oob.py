"""PICKLE with and without protocol-5 out-of-band buffers: one-way MB/s of numpy arrays over shm://.

    python benchmarks/bench_pickle_oob.py [--reps 3] [--count 300] [--size 1M] [--scheme shm]

The same ``--count`` float64 arrays of ``--size`` bytes go from one process (CPU 0) to another
(CPU 1) with ``send``/``recv`` on a pickle channel, twice per repetition: with ipcraft's PICKLE,
whose arrays travel out of band (copied once into the ring, received as views of the message), and
with an in-band pickle serializer (``pickle.dumps`` copies each array into the stream, the channel
copies the stream into the ring, ``pickle.loads`` copies it out again).  The rate is the receiver's
clock from its first to its last array; each figure is the median of ``--reps`` fresh process pairs,
and the ratio is taken within the same repetition.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from typing import Any

import numpy as np

from ipcraft.serializers import PICKLE, Serializer
from ipcraft.testing import unique_name

sys.path.insert(0, os.path.dirname(__file__))
from bench_shm import _pair  # the sibling script's process-pair helper

#: PICKLE without dumps_oob: every array inside the pickle stream (a custom id, the same on both sides).
IN_BAND = Serializer(16, "pickle-in-band", lambda o: pickle.dumps(o, protocol=5), pickle.loads,
                     trusted_only=True)


def _receiver(n: int) -> Any:
    def receive(ch: Any) -> float:
        first = ch.recv()  # the first starts the clock
        t0 = time.perf_counter()
        total = 0
        for _ in range(n - 1):
            total += ch.recv().nbytes
        rate = total / (time.perf_counter() - t0) / 1e6
        ch.send(first.nbytes)
        return rate
    return receive


def _sender(n: int, size: int) -> Any:
    a = np.random.default_rng(0).random(size // 8)

    def send(ch: Any) -> None:
        for _ in range(n):
            ch.send(a)
        ch.recv(timeout=120)  # close only after the receiver has everything
    return send


def rate(scheme: str, serializer: Serializer, n: int, size: int) -> float:
    url = f"{scheme}://{unique_name('po')}"
    capacity = 1 << max(22, (4 * size - 1).bit_length())
    _mine, theirs = _pair(url, _receiver(n), _sender(n, size), serializer=serializer, capacity=capacity)
    return float(theirs)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--size", type=_size, default=1 << 20)
    ap.add_argument("--scheme", default="shm", choices=["shm"])
    args = ap.parse_args()
    print(f"{args.scheme}:// one-way, {args.count} float64 arrays of {args.size} B, median of {args.reps}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    oob, band, ratios = [], [], []
    for _ in range(args.reps):
        o = rate(args.scheme, PICKLE, args.count, args.size)
        b = rate(args.scheme, IN_BAND, args.count, args.size)
        oob.append(o)
        band.append(b)
        ratios.append(o / b)
    print(f"  out of band (PICKLE)  {statistics.median(oob):9,.0f} MB/s   runs {', '.join(f'{x:,.0f}' for x in oob)}")
    print(f"  in band               {statistics.median(band):9,.0f} MB/s   runs {', '.join(f'{x:,.0f}' for x in band)}")
    print(f"  ratio (same run)      {statistics.median(ratios):9.2f}x       runs "
          f"{', '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
