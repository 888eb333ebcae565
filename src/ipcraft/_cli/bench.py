"""``ipcraft bench``: measure every scheme beside bare loops and peer libraries; tables, JSON, plot.

The measuring lives in ipcraft._bench (no click or rich there); this module parses options, shows
progress, prints the measurements, the machine, the placement and the load (with a plain warning
when the machine was busy), and writes the JSON and the plot.  The project's own performance
targets and why each absent subject is absent are printed only with --details.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import click

from .._bench import BUSY_CPUS, DEFAULT_SIZES, Plan, format_size, parse_size, run, sample_before, select_subjects
from .._bench._plan import PLACEMENTS, WAITS
from .._endpoint import SCHEMES

_GROUP_STYLE = {"ipcraft": "bold cyan", "baseline": "green", "peer": "magenta"}


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()  # the mode's default: DEFAULT_SIZES, or 64,1M with --subscribers
    try:
        return tuple(dict.fromkeys(parse_size(v) for v in value.split(",") if v.strip()))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _schemes(ctx: click.Context, param: click.Parameter, value: str | None) -> set[str] | None:
    if not value:
        return None
    names = {v.strip().removesuffix("://") for v in value.split(",") if v.strip()}
    valid = set(SCHEMES) | {"pipe"}
    unknown = names - valid
    if unknown:
        raise click.BadParameter(f"unknown scheme {', '.join(sorted(unknown))}; valid: {', '.join(sorted(valid))}")
    return names


@click.command()
@click.option("--full", is_flag=True, help="Reference iteration counts and 3 repetitions (several minutes).")
@click.option("--repeat", type=click.IntRange(min=1), default=None,
              help="Repetitions (fresh process pairs); cells show the median and min-max.  [default: 1, --full 3]")
@click.option("--only", "only", multiple=True, metavar="LIST",
              help="Measure only subjects whose name matches one of these comma-separated patterns (glob, "
                   "or substring), e.g. 'shm,bare AF_UNIX loop'; repeatable.")
@click.option("--schemes", callback=_schemes, metavar="LIST",
              help="ipcraft schemes to measure, e.g. unix,shm,pipe (baselines and peers still run).")
@click.option("--sizes", callback=_sizes, metavar="LIST",
              help="Message sizes, e.g. 64,4K,64K,1M.  [default: 64,4K,64K,1M]")
@click.option("--wait", "waits", multiple=True, type=click.Choice(WAITS),
              help="Wait modes of the shared-memory schemes; repeatable.  [default: spin and block]")
@click.option("--placement", type=click.Choice(PLACEMENTS), default="cross", show_default=True,
              help="cross: A on CPU 0, B on CPU 1; same: both on CPU 0; none: not pinned.")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Round trips per size (override).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="One-way messages per size (override).")
@click.option("--idle", type=click.FloatRange(min=0), default=None,
              help="Seconds a receiver idles in recv to measure its CPU use (0: skip).  [default: 0, --full 5]")
@click.option("--timeout", "trial_timeout", type=click.FloatRange(min=1), default=None,
              help="Seconds one process pair may run before it is killed.")
@click.option("--malloc-top-pad", type=click.IntRange(min=0), default=0, metavar="BYTES",
              help="glibc M_TOP_PAD for every subject (e.g. 16777216): stops glibc returning the heap top "
                   "to the kernel after each large message, which dominates 1 MiB copies on some VMs. "
                   "[default: 0, glibc's own]")
@click.option("--subscribers", callback=lambda c, p, v: _counts(v), metavar="LIST",
              help="One-to-many mode: one publisher and N subscriber processes for each N listed, e.g. 1,3: "
                   "bcast:// (spin, block) against pyzmq PUB/SUB ipc://, iceoryx2 pub/sub and an mp.Queue "
                   "per subscriber; latency publisher -> subscriber, aggregate deliveries/s and MB/s.  "
                   "[sizes default: 64,1M]")
@click.option("--load", type=click.IntRange(min=0, max=256), default=0, show_default=True, metavar="N",
              help="Run N CPU-bound neighbour processes (not pinned, at most 256) during the measurement: "
                   "the figures of a busy machine, on purpose.")
@click.option("--details", is_flag=True,
              help="Also print why each absent subject is absent and the project's performance targets.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the machine-readable report here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a PNG plot here (needs matplotlib).")
def bench(full: bool, repeat: int | None, only: tuple[str, ...], schemes: set[str] | None,
          sizes: tuple[int, ...], waits: tuple[str, ...], placement: str, iterations: int | None,
          count: int | None, idle: float | None, trial_timeout: float | None, malloc_top_pad: int,
          load: int, details: bool, subscribers: tuple[int, ...] | None, json_path: str | None,
          plot_path: str | None) -> None:
    """Measure ipcraft's schemes beside bare Python loops and peer libraries.

    Each subject runs in a fresh pair of forked processes (pinned as --placement says): ping-pong
    round-trip latency (p50/p99), one-way throughput (msg/s, MB/s) and CPU time per message of both
    processes.  Quick by default (under a minute on two cores); --full for the reference counts.
    """
    from rich.console import Console

    if subscribers:
        _fanout(subscribers, sizes or (64, 1 << 20), only, tuple(dict.fromkeys(waits)) or WAITS, full,
                trial_timeout or 60.0, json_path, count)
        return
    sizes = sizes or DEFAULT_SIZES
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError("--plot needs matplotlib, which is not installed "
                                   "(pip install matplotlib, or pip install 'ipcraft[bench]')") from None
    try:
        plan = Plan(sizes=sizes, full=full, repeat=repeat or (3 if full else 1), placement=placement,
                    waits=tuple(dict.fromkeys(waits)) or WAITS, iterations=iterations, count=count,
                    idle=idle if idle is not None else (5.0 if full else 0.0), trial_timeout=trial_timeout,
                    malloc_top_pad=malloc_top_pad, load=load)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    subjects = _select(plan, only, schemes)
    out, err = Console(), Console(stderr=True)
    out.print(f"[bold]ipcraft bench[/] · {'full' if full else 'quick'} · "
              f"placement {plan.describe_placement()} · repeat {plan.repeat} · "
              f"sizes {', '.join(format_size(z) for z in plan.sizes)} · {plan.describe_malloc()}"
              + (f" · [bold]--load {load}[/]: {load} CPU-bound neighbour process(es), not pinned" if load else ""))
    before = sample_before()
    if before["other_cpus"] + before["steal_cpus"] > BUSY_CPUS:
        err.print(f"[yellow]The machine is busy[/]: other processes use {before['other_cpus']:.2f} of "
                  f"{os.cpu_count()} CPUs right now, so these figures will be unreliable (Ctrl-C to stop).")
    report = _run_with_progress(plan, subjects, err, before)
    _print_report(out, report, details)
    if json_path:
        report["config"]["argv"] = sys.argv[1:]
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        out.print(f"JSON written to {json_path}")
    if plot_path:
        from ._bench_plot import plot

        plot(report, plot_path)
        out.print(f"plot written to {plot_path}")


def _select(plan: Plan, only: tuple[str, ...], schemes: set[str] | None) -> list[Any]:
    """The subjects to measure; a pattern of --only that matches none is an error naming the valid ones."""
    patterns = tuple(p.strip() for arg in only for p in arg.split(",") if p.strip())
    everyone = select_subjects(plan, (), schemes)
    unknown = [p for p in patterns if not select_subjects(plan, (p,), schemes)]
    if unknown:
        names = "\n  ".join(s.name for s in everyone)
        raise click.BadParameter(f"{', '.join(map(repr, unknown))} matches no subject"
                                 f"{' of --schemes' if schemes else ''}; the subjects are:\n  {names}",
                                 param_hint="--only")
    subjects = select_subjects(plan, patterns, schemes)
    if not subjects:
        raise click.UsageError("no subject matches --only/--schemes")
    return subjects


def _run_with_progress(plan: Plan, subjects: list[Any], err: Any, before: dict[str, float]) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # No refresh thread: the runner forks, and a fork must not copy a lock another thread holds.
    progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True, auto_refresh=False)
    task = progress.add_task("starting", total=len(subjects) * plan.repeat)

    def on_progress(done: int, total: int, label: str) -> None:
        progress.update(task, completed=done, description=label)
        progress.refresh()

    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        with progress:
            return run(plan, subjects, on_progress, progress.refresh, before)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the bench's processes were killed and its IPC objects removed")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- output ---------------------------------------------------------------------------------------

def _num(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _cell(r: dict[str, Any], metric: str) -> str:
    if r["status"] != "ok":
        return f"[dim]{r['reason'] if r['status'] == 'skipped' else r['status']}[/]"
    if metric == "rtt":
        lat = r["latency_us"]
        text = f"{_num(lat['p50'])} ({_num(lat['p99'])})"
        if r["runs"] > 1:
            text += f"\n[dim]{_num(lat['p50_min'])}-{_num(lat['p50_max'])}[/]"
        return text
    tp = r["throughput"]
    if metric == "tput":
        text = f"{_num(tp['mb_per_s'])} · {_num(tp['msg_per_s'])}/s"
        if r["runs"] > 1:
            text += f"\n[dim]{_num(tp['mb_per_s_min'])}-{_num(tp['mb_per_s_max'])}[/]"
        return text
    return _num(tp["cpu_us_per_msg"])


def _print_report(out: Any, report: dict[str, Any], details: bool = False) -> None:
    from rich.table import Table

    sizes = report["config"]["sizes"]
    by_name: dict[str, dict[int, dict[str, Any]]] = {}
    groups: dict[str, str] = {}
    for r in report["results"]:
        if r["status"] in ("unavailable", "n/a"):
            continue
        by_name.setdefault(r["name"], {})[r["size"]] = r
        groups[r["name"]] = r["group"]
    titles = {"rtt": "Round-trip latency, µs: p50 (p99)",
              "tput": "One-way throughput: MB/s · messages/s",
              "cpu": "CPU time per one-way message, µs (both processes)"}
    for metric, title in titles.items():
        table = Table(title=title, title_justify="left", show_lines=report["config"]["repeat"] > 1)
        table.add_column("subject")
        for z in sizes:
            table.add_column(format_size(z), justify="right")
        for name, cells in by_name.items():
            table.add_row(f"[{_GROUP_STYLE.get(groups[name], '')}]{name}[/]",
                          *(_cell(cells[z], metric) for z in sizes))
        out.print(table)
    absent = [s for s in report["subjects"] if s["status"] in ("unavailable", "n/a")]
    if absent and details:
        out.print("[bold]Not measured[/]")
        for s in absent:
            out.print(f"  {s['name']}: {s['reason']}")
    elif absent:
        out.print(f"[dim]Not measured here: {', '.join(s['name'] for s in absent)} (--details says why)[/]")
    for e in report["errors"]:
        out.print(f"[red]error[/] {e['name']}: {e['reason']}")
    for who, items in report["leftovers_removed"].items():
        out.print(f"[yellow]removed leftovers of {who}[/]: {', '.join(items)}")
    if report["idle"]:
        out.print("[bold]Idle receiver[/] (blocked in recv; CPU as % of one core): " + ", ".join(
            f"{i['name']} {i['cpu_percent']:.2f} %" for i in report["idle"]))
    if details:
        _print_targets(out, report["targets"])
    m = report["machine"]
    out.print(f"[bold]Machine[/]: {m['cpu_model']} · {m['cpus']} CPUs · kernel {m['kernel']} · {m['python']} · "
              f"{report['duration_s']:.0f} s")
    out.print(f"[bold]Placement[/]: {m['placement_text']}")
    out.print(f"[bold]Load[/]: {_describe_load(report['load'])}")
    if report["load"]["warning"]:
        out.print(f"[bold red]Warning[/]: {report['load']['warning']}")


def _describe_load(load: dict[str, Any]) -> str:
    before, during = load["before"], load["during"]
    text = (f"other processes used {before['other_cpus']:.2f} CPUs before the run "
            f"(1-min load average {before.get('loadavg_1min', float('nan')):.2f}) and "
            f"{during['other_cpus']:.2f} during it")
    if during.get("steal_cpus", 0) > 0.01:
        text += f", the hypervisor took {during['steal_cpus']:.2f}"
    if load["neighbours"]:
        text += (f"; --load {load['neighbours']}: {load['neighbours']} CPU-bound neighbour process(es) "
                 f"ran during the measurement, using {load['neighbour_cpus']:.2f} CPUs")
    return text


def _fmt_target(t: dict[str, Any], value: float) -> str:
    if t["kind"] == "ratio":
        return f"{value:.2f}×"  # noqa: RUF001 (the multiplication sign is meant)
    if t["kind"] == "rtt":
        return f"{value:.2f} µs"
    if t["kind"] == "msgps":
        return f"{value / 1e6:.2f} M msg/s"
    if t["kind"] == "mbps":
        return f"{value:,.0f} MB/s"
    return f"{value:.2f} %"


def _print_targets(out: Any, targets: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="Issue targets (ratios from this run)", title_justify="left")
    for col in ("issue", "measure", "value", "target", ""):
        table.add_column(col)
    for t in targets:
        goal = f"{t['op']} {_fmt_target(t, t['target'])}"
        if t["value"] is None:
            table.add_row(str(t["issue"]), t["label"], "[dim]—[/]", goal, f"[dim]{t['missing']}[/]")
        else:
            verdict = "[green]met[/]" if t["met"] else "[red]not met[/]"
            table.add_row(str(t["issue"]), t["label"], _fmt_target(t, t["value"]), goal, verdict)
    out.print(table)


# -- one-to-many ----------------------------------------------------------------------------------


def _counts(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected numbers of subscribers such as 1,3, not {value!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("numbers of subscribers are >= 1")
    return counts


def _fanout(counts: tuple[int, ...], sizes: tuple[int, ...], only: tuple[str, ...], waits: tuple[str, ...],
            full: bool, timeout: float, json_path: str | None, count: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from .._bench import _fanout, _matches

    out, err = Console(), Console(stderr=True)
    subjects = [s for s in _fanout.fanout_subjects(waits) if not only or _matches(s.name, only)]
    if not subjects:
        raise click.UsageError("no one-to-many subject matches --only")
    out.print(f"[bold]ipcraft bench[/] · one-to-many · subscribers {', '.join(map(str, counts))} · "
              f"sizes {', '.join(format_size(z) for z in sizes)}")
    rows = _fanout.run(subjects, counts, sizes, full, timeout, lambda label: err.print(f"[dim]{label}[/]"), count)
    table = Table(title="One publisher, N subscribers: latency p50 (p99) µs · aggregate deliveries/s · MB/s · "
                        "messages delivered of those sent x subscribers", title_justify="left")
    for col in ("subject", "subs", "size", "latency µs", "deliveries/s", "MB/s", "delivered"):
        table.add_column(col, justify="left" if col == "subject" else "right")
    for r in rows:
        if r["status"] != "ok":
            table.add_row(r["subject"], str(r["subscribers"]), format_size(r["size"]),
                          f"[dim]{r['status']}: {r.get('reason', '')}[/]", "", "", "")
            continue
        lat = r["latency_us"]
        got = f"{r['delivered']:,}/{r['expected']:,}"
        table.add_row(r["subject"], str(r["subscribers"]), format_size(r["size"]),
                      f"{_num(lat['p50'])} ({_num(lat['p99'])})", _num(r["deliveries_per_s"]), _num(r["mb_per_s"]),
                      got if r["delivered"] == r["expected"] else f"[red]{got}[/]")
    out.print(table)
    ok = {(r["subject"], r["subscribers"], r["size"]): r for r in rows if r["status"] == "ok"}
    if len(counts) > 1:
        lo, hi = min(counts), max(counts)
        out.print(f"[bold]Cost from {lo} to {hi} subscribers[/] (per-delivery time, aggregate):")
        for s in subjects:
            for z in sizes:
                a, b = ok.get((s.name, lo, z)), ok.get((s.name, hi, z))
                if a and b:
                    out.print(f"  {s.name} {format_size(z)}: {1e6 / a['deliveries_per_s']:.2f} -> "
                              f"{1e6 / b['deliveries_per_s']:.2f} µs per delivery, latency p50 "
                              f"{a['latency_us']['p50']:.1f} -> {b['latency_us']['p50']:.1f} µs")
    zmq_name = _fanout.ZmqPubSub.name
    ratios = [(s.name, n, z, mine["deliveries_per_s"] / base["deliveries_per_s"])
              for (name, n, z), base in ok.items() if name == zmq_name
              for s in subjects if s.name.startswith("bcast://") and (mine := ok.get((s.name, n, z)))]
    if ratios:
        out.print(f"[bold]Against {zmq_name}[/] (deliveries/s in this run; MB/s alike at one size):")
        for name, n, z, x in ratios:
            out.print(f"  {name} x{n} {format_size(z)}: {x:.1f}x")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"mode": "one-to-many", "subscribers": list(counts), "sizes": list(sizes), "results": rows,
                       "argv": sys.argv[1:]}, f, indent=1)
        out.print(f"JSON written to {json_path}")
