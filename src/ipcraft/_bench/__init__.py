"""Workloads and peer processes behind ``ipcraft bench`` (no click or rich here: see ipcraft._cli.bench).

A run measures *subjects* (ipcraft's schemes through the public API, bare Python loops over the
kernel, and peer libraries) at a few message sizes, each in a fresh pair of forked, pinned processes:
round-trip latency (p50/p99), one-way throughput (msg/s, MB/s) and CPU time per message.  The method
is the one the peer libraries publish their own figures with, so that figures can be set beside
those.

Decisions:

* **Generic over URLs.**  Every scheme in the endpoint table is a subject; one that is not built yet
  (or raises NotImplementedError) is reported as not available, so new transports join by existing.
* **Peers are optional.**  A peer that does not import is listed as not available, never an error.
* **Nothing left behind.**  Named objects carry the run's tag and live under a private temp dir; the
  runner sweeps after each trial and at the end, kills and reaps children on any exit, including
  Ctrl-C (see _sweep and _harness).
* **Busy-polling subjects are not run with both processes on one CPU** (placement ``same``): one would
  spin through its whole time slice while the other waits, which measures the scheduler.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ._harness import Env, Subject, run_trial
from ._load import BUSY_CPUS, LoadMeter, Neighbours, sample_before, verdict
from ._peers import peer_subjects
from ._plan import DEFAULT_SIZES, Plan, format_size, parse_size
from ._report import SCHEMA, aggregate, check_targets, machine_info
from ._subjects import ipcraft_subjects
from ._sweep import IceoryxFiles, sweep

__all__ = ("Plan", "Subject", "DEFAULT_SIZES", "parse_size", "format_size", "select_subjects", "sample_before",
           "BUSY_CPUS", "run")

Progress = Callable[[int, int, str], None]


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    low = name.lower()
    for p in patterns:
        p = p.lower()
        if any(c in p for c in "*?["):
            if fnmatch.fnmatchcase(low, p):
                return True
        elif p in low:
            return True
    return False


def select_subjects(plan: Plan, only: tuple[str, ...] = (), schemes: set[str] | None = None) -> list[Subject]:
    """The subjects of a run: ipcraft's (restricted to ``schemes``), then baselines and peers;
    ``only`` keeps those whose name matches a pattern (a glob, or a substring without wildcards)."""
    subjects = ipcraft_subjects(plan.waits, schemes) + peer_subjects()
    if only:
        subjects = [s for s in subjects if _matches(s.name, only)]
    return subjects


def _tmp_root() -> str:
    """TMPDIR when socket paths under it stay well inside sun_path's 107 bytes, else /tmp."""
    root = tempfile.gettempdir()
    return root if len(root) <= 60 else "/tmp"


def _set_malloc_top_pad(pad: int) -> None:
    """mallopt(M_TOP_PAD, pad) in this process: the heap keeps ``pad`` spare bytes instead of trimming."""
    import ctypes

    m_top_pad = -2  # <malloc.h>
    if ctypes.CDLL(None).mallopt(m_top_pad, pad) != 1:
        raise OSError(f"mallopt(M_TOP_PAD, {pad}) failed")


def run(plan: Plan, subjects: list[Subject], progress: Progress | None = None,
        tick: Callable[[], None] | None = None, before: dict[str, float] | None = None) -> dict[str, Any]:
    """Measure ``subjects`` as ``plan`` says; return the report (JSON-ready).

    ``progress(done, total, label)`` is called before and after each trial; ``tick()`` about ten times
    a second while a trial runs.  ``before`` is the load sampled by ``sample_before()`` (taken here
    when None).  Every child is reaped and every IPC object removed however this
    returns (KeyboardInterrupt included).
    """
    started = time.monotonic()
    if before is None:
        before = sample_before()  # the machine's load before any process of ours runs
    if plan.malloc_top_pad:
        _set_malloc_top_pad(plan.malloc_top_pad)  # the forked subject processes inherit it
    neighbours = Neighbours(plan.load)  # kills the ones it started if it cannot start them all
    try:
        tmpdir = tempfile.mkdtemp(prefix="ipcraft-bench-", dir=_tmp_root())
    except BaseException:
        neighbours.stop()
        raise
    env = Env(tmpdir, f"b{os.getpid()}x{os.urandom(2).hex()}", max(plan.sizes))
    iox = IceoryxFiles()
    trials: dict[str, list[dict[str, Any]]] = {s.name: [] for s in subjects}
    status: dict[str, tuple[str, str]] = {}
    leftovers: dict[str, list[str]] = {}
    total, done = len(subjects) * plan.repeat, 0
    meter = LoadMeter(exclude=neighbours.pids)
    try:
        for rep in range(plan.repeat):  # repetitions outermost, interleaved as in the reference
            trial_plan = plan if rep == 0 else dataclasses.replace(plan, idle=0.0)  # idle CPU: once
            for subject in subjects:
                if subject.name not in status:
                    why = subject.unavailable()
                    if why is not None:
                        status[subject.name] = ("unavailable", why)
                    elif subject.spins and plan.placement == "same":
                        status[subject.name] = ("n/a", "busy-polls: meaningless with both processes on one CPU")
                if subject.name in status:
                    done += 1
                    continue
                if progress:
                    progress(done, total, subject.name)
                skips = {size: r for size in plan.sizes if (r := subject.skip_reason(size)) is not None}
                t0 = time.monotonic()
                trial = run_trial(subject, trial_plan, env, skips, tick)
                trial["seconds"] = time.monotonic() - t0
                for size, reason in skips.items():
                    trial["sizes"][size] = {"status": "skipped", "reason": reason}
                trials[subject.name].append(trial)
                if trial["status"] == "unavailable":
                    status[subject.name] = ("unavailable", trial["reason"])
                found = sweep(env)
                if found:
                    leftovers.setdefault(subject.name, []).extend(found)
                done += 1
                if progress:
                    progress(done, total, subject.name)
    finally:
        neighbour_cpu = neighbours.stop()
        during = meter.stop()
        found = sweep(env)
        if found:
            leftovers.setdefault("(end of run)", []).extend(found)
        shutil.rmtree(tmpdir, ignore_errors=True)
        iox.cleanup()
    load = {"neighbours": plan.load, "neighbour_cpus": round(neighbour_cpu / max(during["seconds"], 1e-9), 3),
            "before": before, "during": during, "busy_threshold_cpus": BUSY_CPUS,
            "warning": verdict(before, during, plan.load)}
    return _report(plan, subjects, trials, status, leftovers, time.monotonic() - started, load)


def _report(plan: Plan, subjects: list[Subject], trials: dict[str, list[dict[str, Any]]],
            status: dict[str, tuple[str, str]], leftovers: dict[str, list[str]],
            seconds: float, load: dict[str, Any]) -> dict[str, Any]:
    results, idle, errors = [], [], []
    for s in subjects:
        runs = trials[s.name]
        st = status.get(s.name)
        for size in plan.sizes:
            if st is not None:
                cell: dict[str, Any] = {"status": st[0], "reason": st[1]}
            else:
                cell = aggregate(runs, size)
            results.append({"name": s.name, "group": s.group, **s.facts, "size": size, **cell})
        idles = [t["idle"] for t in runs if t.get("idle")]
        if idles:
            idle.append({"name": s.name, "seconds": idles[0]["seconds"],
                         "cpu_percent": sorted(i["cpu_percent"] for i in idles)[len(idles) // 2]})
        for t in runs:
            if t["status"] == "error":
                errors.append({"name": s.name, "reason": t["reason"], "traceback": t.get("traceback")})
    return {
        "schema": SCHEMA,
        "machine": machine_info(plan),
        "config": {"sizes": list(plan.sizes), "full": plan.full, "repeat": plan.repeat,
                   "placement": plan.placement, "waits": list(plan.waits),
                   "round_trips": {str(z): plan.round_trips(z) for z in plan.sizes},
                   "messages": {str(z): plan.messages(z) for z in plan.sizes},
                   "idle_seconds": plan.idle, "load": plan.load},
        "load": load,
        "subjects": [{"name": s.name, "group": s.group, **s.facts,
                      "status": status.get(s.name, ("ok", ""))[0],
                      "reason": status.get(s.name, ("ok", ""))[1],
                      "trial_seconds": [round(t["seconds"], 3) for t in trials[s.name]]} for s in subjects],
        "results": results,
        "idle": idle,
        "targets": check_targets(results, idle, plan.waits, plan.sizes),
        "errors": errors,
        "leftovers_removed": leftovers,
        "duration_s": seconds,
    }
