"""How busy the machine is around a bench run, and the CPU-bound neighbours of ``--load N``.

Figures taken on a busy machine can be many times slower than on an idle one, and nothing in them
says so.  So the run measures the CPU time that *other* processes use: for a short sample before
it starts (the bench idle), and over the whole run (the kernel's per-CPU counters in /proc/stat,
less the CPU time of the bench's own processes, from getrusage).  Time the hypervisor gave to other
guests (``steal``) counts as used by others: the bench could not have it either.

``--load N`` starts N processes that spin in ``while True: pass``, not pinned (the scheduler
places them), before the first measurement and kills them after the last: the busy-machine case,
reproducible.  Their CPU is reported apart from that of unexpected others.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from typing import Any

#: Other processes using more than this many CPUs (on average) make the figures unreliable.
BUSY_CPUS = 0.25
#: Seconds of the sample taken before the run starts.
BEFORE_SECONDS = 0.5
_HZ = os.sysconf("SC_CLK_TCK")


def _cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / _HZ, steal / _HZ


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have been reaped."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def _children_seconds(pids: list[int]) -> float:
    """CPU seconds of live children (utime + stime in /proc/PID/stat); 0 for one already gone."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _HZ
    return total


class LoadMeter:
    """Other processes' CPU use between ``__init__`` and ``stop()``, in CPUs (1.0: one CPU busy)."""

    def __init__(self, exclude: list[int] | None = None) -> None:
        self._exclude = exclude or []
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = _cpu_seconds()
        self._own0 = _own_seconds() + _children_seconds(self._exclude)

    def stop(self) -> dict[str, float]:
        """``seconds``, ``other_cpus`` (busy time of others / wall time) and ``steal_cpus``."""
        busy, steal = _cpu_seconds()
        own = _own_seconds() + _children_seconds(self._exclude) - self._own0
        wall = max(time.monotonic() - self._t0, 1e-9)
        others = max(0.0, busy - self._busy0 - own)
        return {"seconds": round(wall, 3), "other_cpus": round(others / wall, 3),
                "steal_cpus": round((steal - self._steal0) / wall, 3)}


def sample_before(seconds: float = BEFORE_SECONDS) -> dict[str, float]:
    """Other processes' CPU use over ``seconds`` while the bench waits, and the load averages."""
    meter = LoadMeter()
    time.sleep(seconds)
    out: dict[str, Any] = meter.stop()
    try:
        with open("/proc/loadavg") as f:
            out["loadavg_1min"] = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


class Neighbours:
    """``n`` CPU-bound processes, not pinned, that die with this one (PR_SET_PDEATHSIG)."""

    CODE = "while True: pass"

    def __init__(self, n: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(n):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", self.CODE], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent, close_fds=True))
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> float:
        """Kill and reap them; return the CPU seconds they used."""
        used = _children_seconds(self.pids)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.procs = []
        return used


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def verdict(before: dict[str, float], during: dict[str, float], neighbours: int) -> str | None:
    """A plain warning when others used more than BUSY_CPUS before or during the run, else None."""
    worst = max(before.get("other_cpus", 0.0) + before.get("steal_cpus", 0.0),
                during.get("other_cpus", 0.0) + during.get("steal_cpus", 0.0))
    if worst <= BUSY_CPUS:
        return None
    cpus = os.cpu_count() or 1
    extra = f" besides the {neighbours} --load neighbour(s)" if neighbours else ""
    steal = during.get("steal_cpus", 0.0)
    stolen = f" (and the hypervisor took {steal:.2f} CPUs)" if steal > 0.01 else ""
    return (f"the machine was busy: other processes{extra} used {before['other_cpus']:.2f} of {cpus} CPUs "
            f"before the run and {during['other_cpus']:.2f} during it"
            f"{stolen}. "
            f"These figures are unreliable (a busy machine can be many times slower); rerun on an idle "
            f"machine to compare mechanisms, or use --load N to measure a busy one on purpose.")
