"""From trials to a report: repetitions aggregated, the machine described, the issues' targets checked.

Aggregation follows the reference method: a cell is the median of the per-run medians with their
min-max, and p99 is the median of the per-run p99s.  Every number in the report comes from this run;
the targets compare subjects measured side by side, never against remembered figures.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ._plan import Plan

SCHEMA = "ipcraft-bench/1"
_PACKAGES = ("ipcraft", "msgpack", "posix_ipc", "sysv_ipc", "pyzmq", "faster-fifo", "iceoryx2", "numpy")
_LIMITS = {
    "fs.mqueue.msg_max": "/proc/sys/fs/mqueue/msg_max",
    "fs.mqueue.msgsize_max": "/proc/sys/fs/mqueue/msgsize_max",
    "kernel.msgmax": "/proc/sys/kernel/msgmax",
    "kernel.msgmnb": "/proc/sys/kernel/msgmnb",
    "net.core.wmem_max": "/proc/sys/net/core/wmem_max",
    "fs.pipe-max-size": "/proc/sys/fs/pipe-max-size",
}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def machine_info(plan: Plan) -> dict[str, Any]:
    """CPU, kernel, Python, package versions, kernel limits and the placement used."""
    cpu_model = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    versions: dict[str, str | None] = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu_model": cpu_model or platform.processor() or None,
        "cpus": os.cpu_count(),
        "cpuidle_driver": _read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "packages": versions,
        "limits": {k: _read(p) for k, p in _LIMITS.items()},
        "placement": plan.placement,
        "placement_cpus": list(plan.cpus),
        "placement_text": plan.describe_placement(),
        "malloc": plan.describe_malloc(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _med_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(trials: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """One cell: the repetitions of one subject at one size."""
    oks = [t["sizes"][size] for t in trials if t["sizes"].get(size, {}).get("status") == "ok"]
    if not oks:
        for t in trials:
            cell = t["sizes"].get(size)
            if cell is not None and cell["status"] == "skipped":
                return {"status": "skipped", "reason": cell["reason"]}
        errs = [t for t in trials if t["status"] != "ok"]
        reason = errs[0]["reason"] if errs else "not measured"
        return {"status": errs[0]["status"] if errs else "error", "reason": reason}
    lat = [c["latency"] for c in oks]
    tput = [c["throughput"] for c in oks]
    p50 = _med_range([x["p50"] for x in lat])
    mbps = _med_range([x["mb_per_s"] for x in tput])
    return {
        "status": "ok", "reason": "", "runs": len(oks),
        "latency_us": {"p50": p50["median"], "p50_min": p50["min"], "p50_max": p50["max"],
                       "p99": statistics.median(x["p99"] for x in lat),
                       "mean": statistics.median(x["mean"] for x in lat),
                       "round_trips": lat[0]["n"],
                       "cpu_us_per_roundtrip": statistics.median(x["cpu_us_per_roundtrip"] for x in lat)},
        "throughput": {"msg_per_s": statistics.median(x["msg_per_s"] for x in tput),
                       "mb_per_s": mbps["median"], "mb_per_s_min": mbps["min"], "mb_per_s_max": mbps["max"],
                       "messages": tput[0]["count"],
                       "cpu_us_per_msg": statistics.median(x["cpu_us_per_msg"] for x in tput)},
    }


# -- the issues' targets ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """One performance target of an issue, checked on this run's figures."""

    issue: int
    label: str
    subject: str
    size: int
    metric: str  # "rtt" (p50 µs) | "msgps" | "mbps" | "idle" (% of a core)
    op: str  # "<=" | ">="
    target: float
    versus: str | None = None  # the subject divided by, same size and metric; None: absolute


def _targets(waits: tuple[str, ...]) -> list[Target]:
    t = [
        Target(2, "unix:// 64 B round trip / bare AF_UNIX loop", "unix://", 64, "rtt", "<=", 1.25,
               "bare AF_UNIX loop"),
        Target(2, "ipcraft.pipe() 64 B round trip / bare AF_UNIX loop (socketpair)", "ipcraft.pipe()", 64,
               "rtt", "<=", 1.25, "bare AF_UNIX loop"),
        Target(2, "ipcraft.pipe(duplex=False) 64 B round trip / bare os.pipe loop",
               "ipcraft.pipe(duplex=False)", 64, "rtt", "<=", 1.25, "bare os.pipe loop"),
        Target(2, "unix:// 64 B round trip / mp.Pipe", "unix://", 64, "rtt", "<=", 1.0, "mp.Pipe"),
        Target(2, "ipcraft.pipe() 64 B round trip / mp.Pipe", "ipcraft.pipe()", 64, "rtt", "<=", 1.0, "mp.Pipe"),
        Target(2, "unix:// 1 MiB MB/s / bare AF_UNIX loop", "unix://", 1 << 20, "mbps", ">=", 0.8,
               "bare AF_UNIX loop"),
    ]
    if "spin" in waits:
        t += [Target(3, "shm:// spin 64 B round trip (µs)", "shm:// spin", 64, "rtt", "<=", 2.0),
              Target(3, "shm:// spin 64 B round trip / iceoryx2", "shm:// spin", 64, "rtt", "<=", 0.35,
                     "iceoryx2 pub/sub (poll)")]
    if "block" in waits:
        t += [Target(3, "shm:// block 64 B round trip (µs)", "shm:// block", 64, "rtt", "<=", 5.0),
              Target(3, "shm:// block idle receiver (% of a core)", "shm:// block", 0, "idle", "<=", 2.0)]
    for w in waits:
        t += [Target(3, f"shm:// {w} 64 B one-way (msg/s)", f"shm:// {w}", 64, "msgps", ">=", 2.5e6),
              Target(3, f"shm:// {w} 64 B one-way msg/s / pyzmq", f"shm:// {w}", 64, "msgps", ">=", 3.0,
                     "pyzmq PAIR ipc://"),
              Target(3, f"shm:// {w} 1 MiB one-way, copying recv_bytes (MB/s)", f"shm:// {w}", 1 << 20, "mbps",
                     ">=", 8000.0),
              Target(3, f"shm:// {w} zero-copy 1 MiB MB/s / iceoryx2", f"shm:// {w} zero-copy", 1 << 20,
                     "mbps", ">=", 1.0, "iceoryx2 pub/sub (poll)"),
              Target(3, f"shm:// {w} 1 MiB round trip / unix://", f"shm:// {w}", 1 << 20, "rtt", "<=", 0.5,
                     "unix://")]
    seq, fresh = "bare AF_UNIX seqpacket loop", "bare AF_UNIX seqpacket loop, fresh bytes"
    for scheme in ("shm", "ring"):
        for w in waits:
            s = f"{scheme}:// {w}"
            t += [Target(10, f"{s} 1 MiB round trip, recv_bytes (allocates) / {seq} (reuses a buffer)", s,
                         1 << 20, "rtt", "<=", 1.0, seq),
                  Target(10, f"{s} recv_bytes_into 1 MiB round trip / {seq} (both reuse a buffer)",
                         f"{s} recv_bytes_into", 1 << 20, "rtt", "<=", 1.0, seq),
                  Target(10, f"{s} 1 MiB round trip / {fresh} (both allocate)", s, 1 << 20, "rtt", "<=", 1.0,
                         fresh),
                  Target(10, f"{s} zero-copy 64 B round trip / copying", f"{s} zero-copy", 64, "rtt", "<=", 1.5,
                         s),
                  Target(10, f"{s} zero-copy 1 MiB round trip / copying", f"{s} zero-copy", 1 << 20, "rtt",
                         "<=", 0.7, s)]
    t += [Target(4, "mq:// 64 B round trip / bare posix_ipc loop", "mq://", 64, "rtt", "<=", 1.3,
                 "bare posix_ipc loop"),
          Target(4, "sysvmq:// 64 B round trip / bare sysv_ipc loop", "sysvmq://", 64, "rtt", "<=", 1.3,
                 "bare sysv_ipc loop")]
    return t


def _value(rows: dict[tuple[str, int], dict[str, Any]], idle: dict[str, Any], name: str, size: int,
           metric: str) -> tuple[float | None, str]:
    if metric == "idle":
        got = idle.get(name)
        return (got["cpu_percent"], "") if got else (None, f"{name}: idle CPU not measured (--idle)")
    cell = rows.get((name, size))
    if cell is None:
        return None, f"{name} was not measured"
    if cell["status"] != "ok":
        return None, f"{name}: {cell['status']} ({cell['reason']})"
    if metric == "rtt":
        return cell["latency_us"]["p50"], ""
    return cell["throughput"]["msg_per_s" if metric == "msgps" else "mb_per_s"], ""


def check_targets(results: list[dict[str, Any]], idle: list[dict[str, Any]], waits: tuple[str, ...],
                  sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Each target whose subject this run included, with its value or why it could not be computed."""
    rows = {(r["name"], r["size"]): r for r in results}
    names = {r["name"] for r in results}
    idle_by = {i["name"]: i for i in idle}
    out = []
    for t in _targets(waits):
        if t.subject not in names or (t.metric != "idle" and t.size not in sizes):
            continue
        value, why = _value(rows, idle_by, t.subject, t.size, t.metric)
        if value is not None and t.versus is not None:
            base, why = _value(rows, idle_by, t.versus, t.size, t.metric)
            value = value / base if base else None
        entry: dict[str, Any] = {"issue": t.issue, "label": t.label, "op": t.op, "target": t.target,
                                 "kind": "ratio" if t.versus else t.metric, "value": value}
        if value is None:
            entry.update(met=None, missing=why)
        else:
            entry["met"] = value <= t.target if t.op == "<=" else value >= t.target
        out.append(entry)
    return out
