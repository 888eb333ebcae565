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
    result = CliRunner().invoke(cli, ["bench", *TINY, *PLACEMENT, "--only", "unix://", "--only", "bare AF_UNIX loop",
                                      "--only", "mp.Pipe", "--idle", "0.2", "--json", str(out_json),
                                      "--plot", str(out_png)])
    assert result.exit_code == 0, result.output
    assert "Round-trip latency" in result.output and "placement" in result.output
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
    assert "Not available" in result.output and "unix://" in result.output
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
    result = runner.invoke(cli, ["bench", "--only", "no-such-subject-anywhere"])
    assert result.exit_code == 2 and "no subject matches" in result.output


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
