"""Where the four copies of a 1 MiB round trip land, and what that costs: two rings against one region.

A copying round trip of an n-byte message makes four copies whatever carries it: A's message into
the channel, the channel into B's buffer, B's buffer into the channel, the channel into A's buffer.
With a socket the channel is kernel memory that is freed as soon as the receiver has copied it out
and handed out again for the very next send, so every copy has at least one side that the CPU has
just touched.  shm:// has one ring per direction: the reply goes into the *other* ring, whose memory
was last touched a whole round trip earlier, and A's next send lands in memory B read long ago.

On a busy two-core machine the two processes of a ping-pong share one CPU (the CPU-bound neighbour
has the other; ``ipcraft bench --load 1 --placement none`` runs them unpinned and the scheduler
places them so), so this script replays the four copies in one process on one CPU, with
``ctypes.memmove`` (glibc's memcpy, the copy the rings' C code uses), for three layouts:

* ``two rings``: as shm:// and ring:// do, each message at the next place of a 4 MiB ring;
* ``two rings, front``: each message at the start of its ring (a ring that reused its front);
* ``one region``: both directions through the same memory, as the kernel's recycled pages are (and
  as shm:// sends a large reply, through its connection's shared region).

It prints microseconds per round trip of copies (median of ``--repeat`` runs) and the ratio of each
layout to ``one region``.  No IPC happens here: this isolates the memory traffic from the waiting.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import time

RING = 4 * 1024 * 1024


def _address(buf: mmap.mmap | bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _one_layout(layout: str, size: int, count: int) -> float:
    """Microseconds per round trip of four copies (median over ``count`` round trips)."""
    fd = os.memfd_create("ipcraft-copy-locality", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 2 * RING)
        rings = mmap.mmap(fd, 2 * RING)
    finally:
        os.close(fd)
    msg, buf_a, buf_b = bytearray(b"\x01" * size), bytearray(size), bytearray(size)
    rings[:] = b"\x01" * (2 * RING)
    r1, r2 = _address(rings), _address(rings) + RING
    m, a, b = _address(msg), _address(buf_a), _address(buf_b)
    memmove, clock = ctypes.memmove, time.perf_counter_ns
    step = (size + 8 + 63) // 64 * 64  # a record: header plus payload, cache-line aligned here
    offset, times = 0, []
    for _ in range(count):
        if layout == "two rings":
            to_b, to_a = r1 + offset, r2 + offset
            offset = offset + step if offset + 2 * step <= RING else 0
        elif layout == "two rings, front":
            to_b, to_a = r1, r2
        else:
            to_b = to_a = r1
        t0 = clock()
        memmove(to_b, m, size)  # A sends
        memmove(b, to_b, size)  # B receives
        memmove(to_a, b, size)  # B replies
        memmove(a, to_a, size)  # A receives
        times.append(clock() - t0)
    del msg, buf_a, buf_b
    rings.close()
    return statistics.median(times[count // 10:]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024 * 1024, help="message size in bytes (default 1 MiB)")
    parser.add_argument("--count", type=int, default=1000, help="round trips per layout and run")
    parser.add_argument("--repeat", type=int, default=3, help="runs, interleaved (the median is shown)")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to run on (-1: do not pin)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    layouts = ("two rings", "two rings, front", "one region")
    runs: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(args.repeat):
        for name in layouts:
            runs[name].append(_one_layout(name, args.size, args.count))
    base = statistics.median(runs["one region"])
    print(f"four copies of {args.size} bytes per round trip, µs (median of {args.repeat}; "
          f"load {os.getloadavg()[0]:.2f}):")
    for name in layouts:
        med = statistics.median(runs[name])
        print(f"  {name:18} {med:8.1f}   runs {' '.join(f'{x:.1f}' for x in runs[name])}   "
              f"{med / base:.2f}x one region")


if __name__ == "__main__":
    main()
