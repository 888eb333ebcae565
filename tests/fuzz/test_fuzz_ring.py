"""Fuzz target: random bytes written into a live ring://'s shared memory while a consumer receives and a
producer sends, each in its own process.

The attacker (this process) writes with plain mmap into the header (cursors, both robust mutexes,
sleep flags, fd slots, anything) and the records, hypothesis choosing where and what, starting each
input from a snapshot of the sound header.  The consumer and the producer run for the whole budget
and may only meet ipcraft's typed errors; neither may crash or hang (each must report back by its
deadline), and each one's peak RSS stays within 64 MiB.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Any

from _fuzz import BUDGET, COUNTS, run_fuzz
from hypothesis import strategies as st

import ipcraft
from ipcraft._rings import mpmc as _mpmc
from ipcraft.errors import IPCError
from ipcraft.testing import Child, unique_name

CAPACITY = 4096
RSS_BOUND_KIB = 64 * 1024

# (offset, size) of what a scribble may hit, hypothesis choosing among them
REGIONS = [(_mpmc.OFF_HEAD, 8), (_mpmc.OFF_TAIL, 8), (_mpmc.OFF_PRODUCER_LOCK, 40), (_mpmc.OFF_CONSUMER_LOCK, 40),
           (_mpmc.OFF_CONSUMERS_SLEEPING, 4), (_mpmc.OFF_PRODUCERS_SLEEPING, 4), (_mpmc.OFF_FD_ARMED, 8),
           (0, _mpmc.HEADER_SIZE), (_mpmc.HEADER_SIZE, CAPACITY)]
_INTERESTING = [0, 4, 8, 12, CAPACITY - 4, CAPACITY - 8, CAPACITY, CAPACITY + 8, 2**31, 2**32 - 1, 2**63, 2**64 - 8]


@st.composite
def scribbles(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        base, size = draw(st.sampled_from(REGIONS))
        at = draw(st.integers(0, size - 1))
        if size == 8 or draw(st.booleans()):  # an integer that breaks cursors and lengths
            value = draw(st.one_of(st.sampled_from(_INTERESTING), st.integers(0, 2**64 - 1)))
            data = value.to_bytes(8, "little")[:max(1, min(8, size - at))]
        else:
            data = draw(st.binary(min_size=1, max_size=min(64, size - at)))
        out.append((base + at, data))
    return out


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _run(url: str, role: str, until: float) -> dict[str, Any]:
    """A consumer or producer working until ``until``; counts what it met.  Any exception that is not
    one of ipcraft's typed errors escapes and fails the test."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start_rss = _peak_rss_kib()
    counts: dict[str, int] = {}
    with ipcraft.queue(url) as q:
        i = 0
        while time.monotonic() < until:
            i += 1
            try:
                if role == "consumer":
                    q.recv_bytes(timeout=0.02)
                    what = "received"
                else:
                    q.send_bytes(i.to_bytes(4, "little") * (i % 40), timeout=0.02)
                    what = "sent"
            except IPCError as exc:
                what = type(exc).__name__
            counts[what] = counts.get(what, 0) + 1
    counts["peak_rss_growth_kib"] = _peak_rss_kib() - start_rss
    return counts


def test_fuzz_live_ring_memory() -> None:
    name = unique_name("fuzzring")
    url = f"ring://{name}"
    with ipcraft.queue(url, create=True, capacity=CAPACITY):
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        try:
            raw = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        sound = bytes(raw[:_mpmc.HEADER_SIZE])
        until = time.monotonic() + BUDGET + 1
        workers = {role: Child(_run, url, role, until) for role in ("consumer", "producer")}
        writes = 0

        def attack(ops: list[tuple[int, bytes]]) -> None:
            nonlocal writes
            raw[:_mpmc.HEADER_SIZE] = sound  # from a sound header, so each input's damage is its own
            for at, data in ops:
                raw[at:at + len(data)] = data
                writes += 1
            time.sleep(0.003)  # let the workers meet it

        try:
            tried = run_fuzz("live ring memory", scribbles(), attack, budget=BUDGET)
            results = {role: child.result(timeout=BUDGET + 30) for role, child in workers.items()}
        finally:
            for child in workers.values():
                child.kill()
                child.wait(10)
            raw.close()
    for role, counts in results.items():
        print(f"live ring {role}: {counts}")
        assert counts["peak_rss_growth_kib"] <= RSS_BOUND_KIB, (role, counts)
    assert tried > 0 and writes >= tried
    COUNTS["live ring memory"] = (tried, COUNTS["live ring memory"][1])
    assert sum(v for k, v in results["consumer"].items() if k != "peak_rss_growth_kib") > 0
