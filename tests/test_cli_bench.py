"""ipcraft bench: runs end to end in a tiny mode, writes a well-formed report, and leaves nothing behind.

These tests check behaviour (structure, skips, cleanup, interruption), never speed: the figures of a
tiny run on a shared machine mean nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from ipcraft._bench import Plan, format_size, parse_size, run
from ipcraft._bench._harness import Ctl, Env, Link, Subject
from ipcraft._cli import cli
from ipcraft.testing import session_key_base, session_token

TINY = ["--sizes", "64", "--iterations", "30", "--count", "200"]
PLACEMENT = ["--placement", "cross" if len(os.sched_getaffinity(0)) >= 2 else "none"]


def _ipc_state(tmp_root: str) -> set[str]:
    """This session's IPC objects, the bench's temp dirs, and iceoryx2's files."""
    token = session_token()
    found = set()
    for d in ("/dev/shm", "/dev/mqueue"):
        if os.path.isdir(d):
            found |= {f"{d}/{n}" for n in os.listdir(d) if token in n or n.startswith("iox2_")}
    base = session_key_base()
    for kind in ("msg", "shm", "sem"):
        with open(f"/proc/sysvipc/{kind}") as f:
            next(f)
            for line in f:
                key = int(line.split()[0]) & 0xFFFFFFFF
                if base <= key < base + 0x10000:
                    found.add(f"sysv {kind} {key:#x}")
    found |= {f"{tmp_root}/{n}" for n in os.listdir(tmp_root) if n.startswith("ipcraft-bench-")}
    return found


def _no_children_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _children_of(pid: int) -> set[int]:
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.add(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _bench_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200"}


@pytest.mark.timeout(120)
def test_cli_runner_writes_report_with_machine_info_targets_and_plot(tmp_path, monkeypatch):
    """A tiny CliRunner run prints the tables and writes JSON (machine, results, targets) and a PNG."""
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(cli, ["bench", *TINY, *PLACEMENT, "--only", "unix://,bare AF_UNIX loop",
                                      "--only", "mp.Pipe", "--idle", "0.2", "--json", str(out_json),
                                      "--plot", str(out_png)])
    assert result.exit_code == 0, result.output
    assert "Round-trip latency" in result.output and "Placement: " in result.output
    assert "Machine: " in result.output and "Load: other processes used" in result.output
    assert "targets" not in result.output.lower()  # the project's own targets: only with --details
    report = json.loads(out_json.read_text())
    assert report["schema"] == "ipcraft-bench/1"
    m = report["machine"]
    assert m["kernel"] and m["python"] and m["cpu_model"] and "ipcraft" in m["packages"]
    assert m["placement"] == PLACEMENT[1] and "placement_cpus" in m
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"unix://", "bare AF_UNIX loop", "mp.Pipe"}
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["size"] == 64 and r["latency_us"]["round_trips"] == 30
        assert 0 < r["latency_us"]["p50"] <= r["latency_us"]["p99"]
        assert r["throughput"]["messages"] == 200 and r["throughput"]["msg_per_s"] > 0
        assert r["throughput"]["cpu_us_per_msg"] > 0
    labels = {t["label"]: t for t in report["targets"]}
    ratio = labels["unix:// 64 B round trip / bare AF_UNIX loop"]
    assert ratio["value"] > 0 and ratio["met"] in (True, False)
    assert [i["name"] for i in report["idle"]] == ["unix://"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _no_children_left()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("ipcraft-bench-")]


@pytest.mark.timeout(180)
def test_subprocess_run_of_every_subject_leaves_nothing_behind(tmp_path):
    """`python -m ipcraft bench` over every subject exits 0, reports each one, and leaks no IPC object."""
    before = _ipc_state(str(tmp_path))
    out_json = tmp_path / "all.json"
    proc = subprocess.run([sys.executable, "-m", "ipcraft", "bench", *TINY, *PLACEMENT, "--json", str(out_json)],
                          env=_bench_env(tmp_path), capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out_json.read_text())
    statuses = {s["name"]: s["status"] for s in report["subjects"]}
    assert statuses["unix://"] == statuses["ipcraft.pipe()"] == statuses["bare os.pipe loop"] == "ok"
    assert not report["errors"], report["errors"]
    assert not report["leftovers_removed"], report["leftovers_removed"]
    for r in report["results"]:
        assert r["status"] in ("ok", "skipped", "unavailable", "n/a")
        if r["status"] in ("skipped", "unavailable"):
            assert r["reason"]
    assert _ipc_state(str(tmp_path)) - before == set()


@pytest.mark.timeout(60)
def test_a_missing_optional_extra_makes_its_subjects_unavailable(tmp_path):
    """Without pyzmq (the ipcraft[zmq] extra) the bench still runs: the zmq subjects are reported
    unavailable, with the reason naming the extra, instead of the whole command failing."""
    out_json = tmp_path / "nozmq.json"
    code = ("import sys; sys.modules['zmq'] = None\n"
            "from ipcraft._cli import main\n"
            f"sys.argv = ['ipcraft', 'bench', *{[*TINY, *PLACEMENT]!r}, '--only', 'zmq+', "
            f"'--json', {str(out_json)!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_bench_env(tmp_path), capture_output=True, text=True,
                          timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zmq_rows = [s for s in json.loads(out_json.read_text())["subjects"] if "zmq+" in s["name"]]
    assert zmq_rows and all(s["status"] == "unavailable" for s in zmq_rows), zmq_rows
    assert all("ipcraft[zmq]" in s.get("reason", "") for s in zmq_rows), zmq_rows


@pytest.mark.timeout(60)
def test_malloc_top_pad_is_applied_and_reported(tmp_path):
    """--malloc-top-pad sets glibc's M_TOP_PAD for the subjects and says so in the header and JSON."""
    out_json = tmp_path / "pad.json"
    proc = subprocess.run([sys.executable, "-m", "ipcraft", "bench", *TINY, *PLACEMENT, "--only", "unix://",
                           "--malloc-top-pad", "8388608", "--json", str(out_json)],
                          env=_bench_env(tmp_path), capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "M_TOP_PAD=8388608" in proc.stdout
    report = json.loads(out_json.read_text())
    assert report["machine"]["malloc"] == "glibc M_TOP_PAD=8388608 in every subject process"
    assert [s["status"] for s in report["subjects"]] == ["ok"]


@pytest.mark.timeout(60)
def test_scheme_without_transport_is_listed_not_available(tmp_path, monkeypatch):
    """A scheme whose transport module is missing is reported as not available, not as a crash."""
    from ipcraft._transports import REGISTRY

    monkeypatch.setitem(REGISTRY, "unix", "no_such_transport_module")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out_json = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["bench", *TINY, *PLACEMENT, "--schemes", "unix", "--only", "unix://",
                                      "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert "Not measured here: unix:// (--details says why)" in " ".join(result.output.split())
    (subject,) = json.loads(out_json.read_text())["subjects"]
    assert subject["status"] == "unavailable" and "not available in this build" in subject["reason"]


@pytest.mark.timeout(60)
def test_size_the_channel_refuses_is_skipped_with_the_kernel_knob(tmp_path, monkeypatch):
    """A size a channel refuses with MessageTooLarge is skipped and names its limit; others still run."""
    with open("/proc/sys/net/core/wmem_max") as f:
        too_big = 4 * int(f.read())
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out_json = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["bench", "--sizes", f"64,{too_big}", "--iterations", "5", "--count", "5",
                                      *PLACEMENT, "--only", "unix+seqpacket://", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    cells = {r["size"]: r for r in json.loads(out_json.read_text())["results"]}
    assert cells[64]["status"] == "ok"
    assert cells[too_big]["status"] == "skipped" and "wmem_max" in cells[too_big]["reason"]


@pytest.mark.timeout(60)
def test_busy_polling_peer_is_not_run_on_one_cpu(tmp_path, monkeypatch):
    """With --placement same, busy-polling subjects are n/a while blocking ones run."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out_json = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["bench", *TINY, "--placement", "same", "--only", "iceoryx2",
                                      "--only", "bare AF_UNIX loop", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    statuses = {s["name"]: s["status"] for s in report["subjects"]}
    assert statuses["bare AF_UNIX loop"] == "ok"
    assert statuses["iceoryx2 pub/sub (poll)"] in ("n/a", "unavailable")
    assert report["machine"]["placement_cpus"][0] == report["machine"]["placement_cpus"][1]


class _PipeSubject(Subject):
    """Test subject over a plain pipe pair; ``hang`` makes B never answer, ``fail`` makes B raise."""

    name = "test subject"
    group = "baseline"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.cleaned = False

    def prepare(self, env: Env) -> None:
        self.fds = os.pipe() + os.pipe()

    def open(self, side: str, ctl: Ctl) -> Link:
        if side == "b" and self.mode == "fail":
            raise RuntimeError("B refuses to start")
        link = Link()
        link.send = lambda data: None  # type: ignore[method-assign]
        link.recv = lambda: os.read(self.fds[0], 1)  # type: ignore[method-assign]  # nothing ever arrives
        return link

    def cleanup(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.cleaned = True


@pytest.mark.timeout(60)
def test_hung_pair_is_killed_at_its_timeout_and_reaped(tmp_path, monkeypatch):
    """A process pair that overruns its time budget is killed, reaped, cleaned up and reported."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    subject = _PipeSubject("hang")
    t0 = time.monotonic()
    report = run(Plan(sizes=(64,), iterations=3, count=3, placement="none", trial_timeout=1.5), [subject])
    assert time.monotonic() - t0 < 15
    (err,) = report["errors"]
    assert "overran" in err["reason"]
    assert subject.cleaned and _no_children_left()


@pytest.mark.timeout(60)
def test_failing_child_reports_its_error(tmp_path, monkeypatch):
    """An exception in a child becomes the subject's error (type and message), and the pair is reaped."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    report = run(Plan(sizes=(64,), iterations=3, count=3, placement="none"), [_PipeSubject("fail")])
    (err,) = report["errors"]
    assert "RuntimeError: B refuses to start" in err["reason"]
    assert report["results"][0]["status"] == "error"
    assert _no_children_left()


@pytest.mark.timeout(90)
def test_ctrl_c_kills_the_children_and_removes_everything(tmp_path):
    """SIGINT to a running bench ends it with status 130, its children gone and nothing left behind."""
    before = _ipc_state(str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "ipcraft", "bench", "--full", "--sizes", "64", *PLACEMENT,
                             "--only", "bare posix_ipc", "--only", "bare sysv_ipc", "--only", "unix://"],
                            env=_bench_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        kids: set[int] = set()
        while time.monotonic() < deadline and len(kids) < 2:
            time.sleep(0.05)
            kids = _children_of(proc.pid)
        assert kids, "the bench never forked its process pair"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.wait()
    assert "interrupted" in proc.stderr.read().decode()
    deadline = time.monotonic() + 5
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(k) for k in kids)
    assert _ipc_state(str(tmp_path)) - before == set()


def test_plot_without_matplotlib_is_a_clear_usage_error(monkeypatch):
    """--plot without matplotlib fails at once, saying what to install."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(cli, ["bench", "--plot", "x.png"])
    assert result.exit_code == 2 and "needs matplotlib" in result.output


def test_bad_options_are_usage_errors():
    """Unknown schemes and malformed sizes are refused with the valid choices."""
    runner = CliRunner()
    result = runner.invoke(cli, ["bench", "--schemes", "carrier-pigeon"])
    assert result.exit_code == 2 and "valid:" in result.output and "unix" in result.output
    result = runner.invoke(cli, ["bench", "--sizes", "lots"])
    assert result.exit_code == 2 and "is not a size" in result.output
    result = runner.invoke(cli, ["bench", "--only", "shm,no-such-subject-anywhere"])
    assert result.exit_code == 2 and "'no-such-subject-anywhere' matches no subject" in result.output
    assert "\n  shm:// block\n" in result.output and "\n  bare AF_UNIX loop\n" in result.output
    result = runner.invoke(cli, ["bench", "--schemes", "unix,shm", "--only", "ring"])
    assert result.exit_code == 2 and "matches no subject of --schemes" in result.output
    assert "ring:// spin" not in result.output and "shm:// spin" in result.output
    for bad in ("-1", "257", "many"):
        result = runner.invoke(cli, ["bench", "--load", bad])
        assert result.exit_code == 2 and "--load" in result.output


def test_sizes_parse_and_format_in_binary_units():
    """Sizes read as 64 / 4K / 64KiB / 1M and print back as 64 B / 4 KiB / 1 MiB."""
    assert [parse_size(s) for s in ("64", "4K", "64KiB", "1M", "1mib")] == [64, 4096, 65536, 1 << 20, 1 << 20]
    assert [format_size(n) for n in (64, 4096, 1 << 20, 1000)] == ["64 B", "4 KiB", "1 MiB", "1000 B"]
    with pytest.raises(ValueError):
        parse_size("0")


def test_bench_machinery_imports_neither_click_nor_rich():
    """ipcraft._bench (what the command drives) does not load click or rich."""
    code = "import sys, ipcraft._bench; print('click' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_subscribers_mode_measures_bcast_against_the_peers_and_leaves_nothing(tmp_path):
    """--subscribers runs one publisher and N subscriber processes per subject; every message is delivered
    to every subscriber (the report says so), and no ring is left in /dev/shm."""
    out = tmp_path / "fanout.json"
    before = {n for n in os.listdir("/dev/shm") if n.startswith("ipcraft-bench-")}
    result = CliRunner().invoke(cli, ["bench", "--subscribers", "1,2", "--sizes", "64", "--count", "300",
                                      "--only", "bcast:// block", "--only", "mp.Queue", "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Cost from 1 to 2 subscribers" in result.output
    report = json.loads(out.read_text())
    rows = {(r["subject"], r["subscribers"]): r for r in report["results"]}
    assert set(rows) == {(s, n) for s in ("bcast:// block", "mp.Queue per subscriber") for n in (1, 2)}
    for r in rows.values():
        assert r["status"] == "ok" and r["delivered"] == r["expected"] == 300 * r["subscribers"]
        assert r["latency_us"]["p50"] > 0 and r["deliveries_per_s"] > 0
    assert {n for n in os.listdir("/dev/shm") if n.startswith("ipcraft-bench-")} == before


@pytest.mark.timeout(120)
def test_subscribers_mode_counts_what_pyzmq_delivered_and_compares_bcast_with_it(tmp_path):
    """pyzmq PUB/SUB runs with high-water marks of about 16 MiB of messages (16 to 1000), a handshake
    before timing and an end marker repeated until confirmed: the trial ends, the report says how many
    messages its subscribers got, and bcast:// is compared with it."""
    pytest.importorskip("zmq")
    from ipcraft._bench._fanout import zmq_hwm

    assert (zmq_hwm(64), zmq_hwm(64 << 10), zmq_hwm(1 << 20), zmq_hwm(16 << 20)) == (1000, 256, 16, 16)
    out = tmp_path / "fanout.json"
    result = CliRunner().invoke(cli, ["bench", "--subscribers", "2", "--sizes", "64", "--count", "20000",
                                      "--only", "pyzmq", "--only", "bcast:// block", "--timeout", "60",
                                      "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r["subject"]: r for r in json.loads(out.read_text())["results"]}
    zmq_row = rows["pyzmq PUB/SUB ipc://"]
    assert zmq_row["status"] == "ok" and 0 < zmq_row["delivered"] <= zmq_row["expected"] == 40_000
    assert "delivered" in result.output  # (a column: the narrow test terminal may wrap its cells)
    assert "Against pyzmq PUB/SUB ipc://" in result.output and "bcast:// block x2 64 B: " in result.output


@pytest.mark.timeout(120)
def test_default_output_has_only_measurements_and_details_has_the_rest(tmp_path, monkeypatch):
    """No target table and no object repr by default; --details shows why a subject is absent."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    from ipcraft._transports._contract import ZeroCopy
    from ipcraft._transports.ring import MpmcTransport

    # A ring without zero copy, so its view subject is absent.  The capability is a runtime protocol whose
    # issubclass() answers are cached: the cache is cleared when the method goes and when it comes back.
    reserve = MpmcTransport.reserve
    del MpmcTransport.reserve
    ZeroCopy._abc_caches_clear()  # type: ignore[attr-defined]
    try:
        args = ["bench", *TINY, *PLACEMENT, "--schemes", "ring", "--only", "ring:// block"]
        plain = CliRunner().invoke(cli, args)
        detailed = CliRunner().invoke(cli, [*args, "--details"])
    finally:
        MpmcTransport.reserve = reserve  # type: ignore[method-assign]
        ZeroCopy._abc_caches_clear()  # type: ignore[attr-defined]
    assert plain.exit_code == 0, plain.output
    assert "ring:// block zero-copy (--details says why)" in plain.output.replace("\n", " ")
    assert "<Queue" not in plain.output and "targets" not in plain.output.lower()
    assert detailed.exit_code == 0, detailed.output
    assert "Not measured" in detailed.output and "ring:// block zero-copy: " in detailed.output


@pytest.mark.timeout(120)
def test_load_runs_cpu_bound_neighbours_and_reports_them(tmp_path):
    """--load 2: two unpinned spinning processes run during the measurement, are reported, and are gone after."""
    out_json = tmp_path / "load.json"
    proc = subprocess.Popen([sys.executable, "-m", "ipcraft", "bench", *TINY, "--placement", "none",
                             "--only", "bare AF_UNIX loop", "--load", "2", "--json", str(out_json)],
                            env=_bench_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        spinners: set[int] = set()
        running = False  # a neighbour seen running or runnable (state R), not asleep
        while proc.poll() is None:  # the bench's children that run the neighbours' code
            for kid in _children_of(proc.pid):
                try:
                    with open(f"/proc/{kid}/cmdline", "rb") as f:
                        if b"while True: pass" not in f.read():
                            continue
                    spinners.add(kid)
                    with open(f"/proc/{kid}/stat") as f:
                        running |= f.read().rsplit(")", 1)[1].split()[0] == "R"
                except OSError:
                    pass
            time.sleep(0.05)
        out, err = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert len(spinners) == 2
    assert not any(_alive(pid) for pid in spinners)
    assert "--load 2: 2 CPU-bound neighbour process(es)" in " ".join(out.split())
    report = json.loads(out_json.read_text())
    assert report["config"]["load"] == 2 and report["load"]["neighbours"] == 2
    assert running and report["load"]["neighbour_cpus"] > 0.05  # they spun (how much depends on the machine)
    for when in ("before", "during"):
        assert report["load"][when]["seconds"] > 0 and report["load"][when]["other_cpus"] >= 0


@pytest.mark.timeout(60)
def test_load_meter_sees_another_process_burning_cpu_and_the_verdict_says_so():
    """A spinning process that is not the bench's counts as other load, and the verdict warns plainly."""
    from ipcraft._bench._load import BUSY_CPUS, LoadMeter, verdict

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 3\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.3)
        meter = LoadMeter()
        time.sleep(1.5)
        during = meter.stop()
    finally:
        spinner.kill()
        spinner.wait()
    assert during["other_cpus"] >= 0.5, during
    warning = verdict({"other_cpus": 0.0, "steal_cpus": 0.0}, during, 0)
    assert warning is not None and "unreliable" in warning and "busy" in warning
    assert verdict({"other_cpus": 0.0}, {"other_cpus": BUSY_CPUS / 2, "steal_cpus": 0.0}, 0) is None


def test_plot_panels_say_which_way_is_better_and_tell_spin_from_block_with_spread():
    """The figure: titled panels, spin dashed and block solid, a min-max band where runs differ."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from ipcraft._cli._bench_plot import figure

    def cell(name: str, size: int, p50: tuple[float, float, float], mbps: tuple[float, float, float]) -> dict:
        return {"name": name, "group": "ipcraft", "size": size, "status": "ok", "runs": 3,
                "latency_us": {"p50": p50[1], "p50_min": p50[0], "p50_max": p50[2]},
                "throughput": {"mb_per_s": mbps[1], "mb_per_s_min": mbps[0], "mb_per_s_max": mbps[2]}}

    results = [cell(n, z, (1.0, 2.0, 3.0), (10.0, 20.0, 30.0)) for n in ("shm:// spin", "shm:// block")
               for z in (64, 4096)]
    report = {"results": results, "load": {"neighbours": 1, "warning": "busy"},
              "machine": {"cpu_model": "cpu", "cpus": 2, "kernel": "k", "python": "py", "placement_text": "none"}}
    fig = figure(report)
    try:
        rtt, tput = fig.axes[:2]
        assert "lower is better" in rtt.get_title() and "higher is better" in tput.get_title()
        styles = {line.get_label(): (line.get_linestyle(), line.get_markerfacecolor()) for line in rtt.get_lines()}
        assert styles["shm:// spin"][0] == "--" and styles["shm:// spin"][1] == "none"
        assert styles["shm:// block"][0] == "-" and styles["shm:// block"][1] != "none"
        assert sum(isinstance(c, PolyCollection) for c in rtt.collections) == 2  # one band per subject
        assert "--load 1" in fig._suptitle.get_text() and "unreliable" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
