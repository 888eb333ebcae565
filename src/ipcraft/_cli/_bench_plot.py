"""The PNG of ``ipcraft bench --plot``: latency and throughput against message size, one line per subject.

Each panel has a title saying which way is better; a subject's line runs through the medians and a
shaded band spans the min-max over the repetitions; the wait mode is told by the line (spin: dashed
with hollow markers, block: solid with filled ones) and the group by the colour family.
"""

from __future__ import annotations

from typing import Any

_WAIT_STYLE = {"spin": {"linestyle": "--", "markerfacecolor": "none"}, "block": {"linestyle": "-"}}
_GROUP_STYLE = {"ipcraft": "-", "baseline": "-.", "peer": ":"}


def _wait_of(name: str) -> str | None:
    for wait in _WAIT_STYLE:
        if f" {wait}" in name:
            return wait
    return None


def plot(report: dict[str, Any], path: str) -> None:
    """Draw round-trip p50 and one-way MB/s per subject on log-log axes and save a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(report: dict[str, Any]) -> Any:
    """The matplotlib Figure of :func:`plot` (two panels: latency, throughput)."""
    import matplotlib.pyplot as plt

    from .._bench import format_size

    series: dict[str, dict[str, Any]] = {}
    for r in report["results"]:
        if r["status"] != "ok":
            continue
        s = series.setdefault(r["name"], {"group": r["group"], "size": [], "rtt": [], "rtt_lo": [], "rtt_hi": [],
                                          "mbps": [], "mbps_lo": [], "mbps_hi": []})
        lat, tp = r["latency_us"], r["throughput"]
        s["size"].append(r["size"])
        s["rtt"].append(lat["p50"])
        s["rtt_lo"].append(lat["p50_min"])
        s["rtt_hi"].append(lat["p50_max"])
        s["mbps"].append(tp["mb_per_s"])
        s["mbps_lo"].append(tp["mb_per_s_min"])
        s["mbps_hi"].append(tp["mb_per_s_max"])
    fig, (ax_rtt, ax_tput) = plt.subplots(1, 2, figsize=(15, 7))
    cmap = plt.get_cmap("tab20")
    for i, (name, s) in enumerate(series.items()):
        color = cmap(i % 20)
        wait = _wait_of(name)
        kw: dict[str, Any] = {"color": color, "marker": "os^D"[i // 20 % 4], "label": name,
                              "linestyle": _GROUP_STYLE.get(s["group"], "-")}
        if wait is not None:
            kw.update(_WAIT_STYLE[wait])
        for ax, key in ((ax_rtt, "rtt"), (ax_tput, "mbps")):
            ax.plot(s["size"], s[key], **kw)
            if any(lo != hi for lo, hi in zip(s[f"{key}_lo"], s[f"{key}_hi"], strict=True)):
                ax.fill_between(s["size"], s[f"{key}_lo"], s[f"{key}_hi"], color=color, alpha=0.15, linewidth=0)
    sizes = sorted({z for s in series.values() for z in s["size"]})
    panels = ((ax_rtt, "Round-trip latency p50 (lower is better)", "round trip p50 (µs)"),
              (ax_tput, "One-way throughput (higher is better)", "one-way throughput (MB/s)"))
    for ax, title, ylabel in panels:
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [format_size(z) for z in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("message size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_tput.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                   title="spin: dashed, hollow · block: solid\nband: min-max of the runs", title_fontsize=7)
    m, load = report["machine"], report.get("load", {})
    note = f" · --load {load['neighbours']}" if load.get("neighbours") else ""
    if load.get("warning"):
        note += " · WARNING: the machine was busy, figures unreliable"
    fig.suptitle(f"ipcraft bench · {m['cpu_model']} · {m['cpus']} CPUs · kernel {m['kernel']} · {m['python']} · "
                 f"placement {m['placement_text']}{note}", fontsize=9)
    fig.tight_layout()
    return fig
