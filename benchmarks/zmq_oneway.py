"""Which side bounds zmq+ipc:// / zmq+tcp:// one-way throughput: ipcraft or bare pyzmq on each side.

Two processes over one ipcraft channel (listen/connect, insecure).  Each side either goes through the
Channel (send_bytes / recv_bytes) or calls pyzmq's send / recv on the very same PAIR socket
(``extra("zmq_socket")``), writing or checking ipcraft's 8-byte header itself, so the four combinations
differ only in the layers above libzmq.  Prints msg/s of each combination, the receiver's clock.

    flock /tmp/ipcraft-bench.lock python benchmarks/zmq_oneway.py [--scheme zmq+tcp] [-n 200000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import tempfile
import time
from typing import Any

import ipcraft
from ipcraft._framing import HEADER, HEADER_SIZE, MAGIC

SIZE = 64


def _url(scheme: str, tmp: str) -> str:
    if scheme == "zmq+ipc":
        return f"zmq+ipc://{tmp}/bench.zmq"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"zmq+tcp://127.0.0.1:{s.getsockname()[1]}"


def _sender(ch: Any, bare: bool, n: int) -> float:
    c0 = time.thread_time()
    payload = b"\xa5" * SIZE
    if bare:
        send = ch.extra("zmq_socket").send
        msg = HEADER.pack(MAGIC, 0, 0, SIZE) + payload
        for _ in range(n):
            send(msg)
    else:
        send = ch.send_bytes
        for _ in range(n):
            send(payload)
    return (time.thread_time() - c0) / n


def _receiver(ch: Any, bare: bool, n: int) -> tuple[float, float]:
    if bare:
        recv = ch.extra("zmq_socket").recv
        data = recv()
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(n - 1):
            data = recv()[HEADER_SIZE:]
    else:
        recv = ch.recv_bytes
        data = recv()
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(n - 1):
            data = recv()
    assert len(data) == SIZE
    return (n - 1) / (time.perf_counter() - t0), (time.thread_time() - c0) / (n - 1)


def _child(url: str, bare_tx: bool, n: int, go: Any, out: Any) -> None:
    ch = ipcraft.connect(url, timeout=30, insecure=True)
    go.wait()
    out.put(_sender(ch, bare_tx, n))
    ch.close()


def run(scheme: str, n: int, bare_tx: bool, bare_rx: bool) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = _url(scheme, tmp)
        lis = ipcraft.listen(url, insecure=True)
        ctx = mp.get_context("fork")
        go, out = ctx.Event(), ctx.SimpleQueue()
        p = ctx.Process(target=_child, args=(str(lis.endpoint), bare_tx, n, go, out))
        p.start()
        try:
            ch = lis.accept(timeout=30)
            go.set()
            rate, rx_cpu = _receiver(ch, bare_rx, n)
            tx_cpu = out.get()
            ch.close()
        finally:
            lis.close()
            p.join(30)
            if p.is_alive():
                p.kill()
    return rate, tx_cpu, rx_cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scheme", default="zmq+ipc")
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    print(f"{args.scheme} one-way {SIZE} B, {args.n} messages, load {os.getloadavg()[0]:.2f}")
    for bare_tx, bare_rx in ((True, True), (False, True), (True, False), (False, False)):
        runs = sorted(run(args.scheme, args.n, bare_tx, bare_rx) for _ in range(args.repeat))
        rate, tx_cpu, rx_cpu = runs[len(runs) // 2]
        what = f"{'bare' if bare_tx else 'ipcraft'} sender -> {'bare' if bare_rx else 'ipcraft'} receiver"
        print(f"  {what:40s} {rate / 1e3:6.0f} k msg/s   sender {tx_cpu * 1e6:5.2f} us CPU/msg, "
              f"receiver {rx_cpu * 1e6:5.2f} us CPU/msg (calling threads)")


if __name__ == "__main__":
    main()
