"""Batches against one message per call: one-way messages per second between two processes.

    python benchmarks/bench_batches.py [--reps 3] [--count 200000] [--batch 64] [--size 64]
                                       [--schemes shm,ring,unix,tcp,fifo]

For each scheme, the same N messages of ``--size`` bytes (the raw serializer, so a message is its
bytes) go from one process to another twice: with ``send_bytes``/``recv_bytes`` per message (their
fast path), and with
``send_many``/``recv_many`` in batches of ``--batch``.  On shm:// and ring:// a batch goes through
the ring in C with one publication of the cursor and at most one wake-up; over unix:// and tcp://
a batch's frames are written in one system call and parsed from one read; fifo:// writes a batch
under one acquisition of its writers' lock, in writes of up to PIPE_BUF bytes.
The rate is the receiver's clock from its first to its last
message; each figure is the median of ``--reps`` fresh process pairs (the sender on CPU 0, the
receiver on CPU 1), and the ratio is taken within the same repetition.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import ipcraft
from ipcraft.testing import Child, unique_name

sys.path.insert(0, os.path.dirname(__file__))
from bench_shm import _pair, _pin  # the sibling script's process-pair helper


def _receive(ch: Any, n: int, batch: int) -> float:
    """Take n messages (per call, or in batches); messages per second after the first."""
    got = len(ch.recv_many(batch)) if batch > 1 else len([ch.recv_bytes()])  # the first starts the clock
    t0 = time.perf_counter()
    if batch > 1:
        while got < n:
            got += len(ch.recv_many(batch))
    else:
        recv = ch.recv_bytes
        for _ in range(n - 1):
            recv()
    return (n - 1) / (time.perf_counter() - t0)


def _receiver(n: int, batch: int) -> Any:
    def receive(ch: Any) -> float:
        rate = _receive(ch, n, batch)
        ch.send(b"done")
        return rate
    return receive


def _sender(n: int, batch: int, size: int) -> Any:
    msgs = [os.urandom(size) for _ in range(batch)]

    def send(ch: Any) -> None:
        if batch > 1:
            for _ in range(n // batch):
                ch.send_many(msgs)
        else:
            snd, msg = ch.send_bytes, msgs[0]
            for _ in range(n):
                snd(msg)
        ch.recv(timeout=60)  # close only after the receiver has everything
    return send


def _queue_pair(url: str, n: int, batch: int, size: int) -> float:
    """ring:// and fifo:// are queues: the receiver's process creates them, the sender here opens them."""
    ready_r, ready_w = os.pipe()

    def serve() -> float:
        _pin(1)
        with ipcraft.queue(url, create=True, serializer="raw") as q:  # the reader owns the queue
            os.write(ready_w, b"!")
            return _receive(q, n, batch)

    child = Child(serve)
    os.read(ready_r, 1)
    os.close(ready_r)
    os.close(ready_w)
    _pin(0)
    try:
        with ipcraft.queue(url, serializer="raw") as q:  # a writer may leave before the reader is done
            msgs = [os.urandom(size) for _ in range(batch)]
            if batch > 1:
                for _ in range(n // batch):
                    q.send_many(msgs)
            else:
                for _ in range(n):
                    q.send_bytes(msgs[0])
        return float(child.result(120))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(scheme: str, n: int, batch: int, size: int) -> float:
    if scheme == "ring":
        return _queue_pair(f"ring://{unique_name('bb')}", n, batch, size)
    if scheme == "fifo":
        return _queue_pair(f"fifo://{tempfile.gettempdir()}/{unique_name('bb')}", n, batch, size)
    url = {"shm": f"shm://{unique_name('bb')}", "unix": f"unix:@{unique_name('bb')}",
           "tcp": f"tcp://127.0.0.1:{_free_port()}?insecure=1"}[scheme]
    _mine, theirs = _pair(url, _receiver(n, batch), _sender(n, batch, size), serializer="raw")
    return float(theirs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--schemes", default="shm,ring,unix")
    args = ap.parse_args()
    n = args.count // args.batch * args.batch
    print(f"one-way, {args.size} B messages, {n} per run, batches of {args.batch}, median of {args.reps}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'scheme':8} {'per message':>14} {'batches':>14} {'ratio':>7}")
    for scheme in args.schemes.split(","):
        singles, batches, ratios = [], [], []
        for _ in range(args.reps):
            one = rate(scheme, n, 1, args.size)
            many = rate(scheme, n, args.batch, args.size)
            singles.append(one)
            batches.append(many)
            ratios.append(many / one)
        print(f"{scheme:8} {statistics.median(singles) / 1e6:10.2f} M/s {statistics.median(batches) / 1e6:10.2f} M/s "
              f"{statistics.median(ratios):6.1f}x")


if __name__ == "__main__":
    main()
