"""One-way throughput of the C peer (c/ipcraft.h) next to Python, on ring:// and shm://, in one run.

    python benchmarks/bench_c_peer.py [--n64 200000] [--n1m 100] [--reps 3]

For each scheme and message size (64 B and 1 MiB) it measures:

* **C -> Python**: c/examples/producer.c (compiled here with the system C compiler, -O2) reads N
  lines of that size from a file and sends each as one raw message; a Python consumer receives them
  with ``recv_bytes``.
* **Python -> Python**: a forked Python producer sends the same N messages with ``send_bytes``.

The Python side creates the ring or listens on shm://.  Producer on CPU 0, consumer on CPU 1 (when
there are two).  The time runs from the consumer's first message to its last, so process start-up
is left out; the figure is (N - 1) messages over that time, the median of ``--reps`` runs.  MB = 10^6
bytes.  Only figures from one run on one quiet machine compare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import ipcraft
from ipcraft.testing import Child, unique_name

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
TWO_CPUS = len(os.sched_getaffinity(0)) >= 2


def _pin(cpu: int) -> None:
    if TWO_CPUS:
        os.sched_setaffinity(0, {cpu})


def _payload(size: int) -> bytes:
    """Random bytes without a newline (a line for the C producer); not zeros, which flatter copies."""
    return os.urandom(size).translate(bytes.maketrans(b"\n", b"\x0b"))


def _build(out: Path) -> str:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise SystemExit("bench_c_peer: no C compiler (cc, gcc or clang) on PATH")
    exe = out / "producer"
    subprocess.run([cc, "-O2", "-pthread", "-I", str(ROOT / "c"), "-o", str(exe),
                    str(ROOT / "c" / "examples" / "producer.c")], check=True)
    return str(exe)


def _receive(ch: Any, n: int) -> float:
    """Receive n messages; seconds from the first to the last."""
    ch.recv_bytes(timeout=60)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        ch.recv_bytes(timeout=60)
    return time.perf_counter() - t0


def _python_producer(url: str, size: int, n: int) -> None:
    _pin(0)
    msg = _payload(size)
    if url.startswith("ring://"):
        with ipcraft.queue(url, serializer="raw") as q:
            for _ in range(n):
                q.send_bytes(msg, timeout=60)
    else:
        with ipcraft.connect(url, serializer="raw") as ch:
            for _ in range(n):
                ch.send_bytes(msg, timeout=60)
            ch.recv_bytes(timeout=60)  # stay until the consumer has everything


def _run(scheme: str, size: int, n: int, c_producer: str | None, lines: Path | None) -> float:
    """One run: messages per second from the producer (C if given, else Python) to Python."""
    url = f"{scheme}://{unique_name('bcp')}"
    side: Any = (ipcraft.queue(url, create=True, serializer="raw") if scheme == "ring"
                 else ipcraft.listen(url, serializer="raw"))
    with side:
        if c_producer is not None:
            assert lines is not None
            with open(lines, "rb") as stdin:
                proc = subprocess.Popen([c_producer, url], stdin=stdin, preexec_fn=lambda: _pin(0))
            child = None
        else:
            proc, child = None, Child(_python_producer, url, size, n)
        try:
            ch = side if scheme == "ring" else side.accept(timeout=60)
            seconds = _receive(ch, n)
            if scheme == "shm":
                if child is not None:
                    ch.send_bytes(b"done")
                ch.close()
        finally:
            if proc is not None:
                proc.wait(60)
            if child is not None:
                child.result(60)
    return (n - 1) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n64", type=int, default=200_000, help="messages per run at 64 B")
    ap.add_argument("--n1m", type=int, default=100, help="messages per run at 1 MiB")
    ap.add_argument("--reps", type=int, default=3, help="runs per cell (the median is shown)")
    args = ap.parse_args()
    _pin(1)
    with tempfile.TemporaryDirectory(prefix="bench-c-peer-") as tmp:
        c_producer = _build(Path(tmp))
        files = {}
        for size, n in ((64, args.n64), (MiB, args.n1m)):
            files[size] = Path(tmp) / f"lines-{size}"
            line = _payload(size) + b"\n"
            with open(files[size], "wb") as f:
                for _ in range(n):
                    f.write(line)
        print(f"one-way throughput, Python consumer; producer CPU 0, consumer CPU 1: {TWO_CPUS}; "
              f"median of {args.reps} runs")
        print(f"{'scheme':8} {'size':>7} {'C -> Python':>24} {'Python -> Python':>24}")
        for scheme in ("ring", "shm"):
            for size, n in ((64, args.n64), (MiB, args.n1m)):
                cells = []
                for producer in (c_producer, None):
                    rates = [_run(scheme, size, n, producer, files[size]) for _ in range(args.reps)]
                    rate = statistics.median(rates)
                    cells.append(f"{rate:>11,.0f} msg/s {rate * size / 1e6:>7,.0f} MB/s")
                label = "64 B" if size == 64 else "1 MiB"
                print(f"{scheme + '://':8} {label:>7} {cells[0]:>24} {cells[1]:>24}")


if __name__ == "__main__":
    main()
