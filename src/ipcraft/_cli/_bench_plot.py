"""The PNG of ``ipcraft bench --plot``: latency and throughput against message size, one line per subject."""

from __future__ import annotations

from typing import Any

_STYLE = {"ipcraft": "-", "baseline": "--", "peer": ":"}


def plot(report: dict[str, Any], path: str) -> None:
    """Draw round-trip p50 and one-way MB/s per subject on log-log axes and save a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, Any]] = {}
    for r in report["results"]:
        if r["status"] != "ok":
            continue
        s = series.setdefault(r["name"], {"group": r["group"], "size": [], "rtt": [], "mbps": []})
        s["size"].append(r["size"])
        s["rtt"].append(r["latency_us"]["p50"])
        s["mbps"].append(r["throughput"]["mb_per_s"])
    fig, (ax_rtt, ax_tput) = plt.subplots(1, 2, figsize=(14, 6.5))
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i) for i in range(20)]
    for i, (name, s) in enumerate(series.items()):
        kw = {"color": colors[i % len(colors)], "marker": "os^D"[i // len(colors) % 4], "label": name}
        style = _STYLE.get(s["group"], "-")
        ax_rtt.plot(s["size"], s["rtt"], style, **kw)
        ax_tput.plot(s["size"], s["mbps"], style, **kw)
    from .._bench import format_size

    sizes = sorted({z for s in series.values() for z in s["size"]})
    for ax, ylabel in ((ax_rtt, "round trip p50 (µs)"), (ax_tput, "one-way throughput (MB/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [format_size(z) for z in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_tput.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    m = report["machine"]
    fig.suptitle(f"ipcraft bench · {m['cpu_model']} · kernel {m['kernel']} · {m['python']} · "
                 f"placement {m['placement_text']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
