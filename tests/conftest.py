"""Test-session fixtures: the IPC leak check, and factories that always clean up.

The leak check snapshots the IPC objects that carry this session's token (ipcraft.testing
.session_token) before and after the whole run: files in /dev/shm and /dev/mqueue, System V objects
whose key lies in the session's key range (/proc/sysvipc), and sockets/FIFOs under the session's temp
directory.  Anything new at the end fails the run.  Filtering on the token keeps concurrent test
sessions on one machine from blaming each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from ipcraft.testing import session_key_base, session_token

TOKEN = session_token()  # set before any child is forked, so all inherit it


def _sysv_keys(kind: str) -> set[tuple[str, int, int]]:
    base = session_key_base()
    found = set()
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            next(f)
            for line in f:
                fields = line.split()
                key, ident = int(fields[0]), int(fields[1])
                if base <= (key & 0xFFFFFFFF) < base + 0x10000:
                    found.add((kind, key, ident))
    except FileNotFoundError:
        pass
    return found


def ipc_snapshot() -> set[object]:
    objs: set[object] = set()
    for d in ("/dev/shm", "/dev/mqueue"):
        try:
            objs |= {(d, n) for n in os.listdir(d) if TOKEN in n}
        except FileNotFoundError:
            pass
    for kind in ("msg", "sem", "shm"):
        objs |= _sysv_keys(kind)
    return objs


@pytest.fixture(scope="session", autouse=True)
def ipc_leak_check():
    """Fail the run if any IPC object made by this session outlives it."""
    before = ipc_snapshot()
    yield
    leaked = ipc_snapshot() - before
    for obj in leaked:  # clean up so the machine stays usable, then fail loudly
        if isinstance(obj, tuple) and len(obj) == 2:
            try:
                os.unlink(os.path.join(*obj))
            except OSError:
                pass
        elif isinstance(obj, tuple) and len(obj) == 3:
            flag = {"msg": "-q", "sem": "-s", "shm": "-m"}[obj[0]]
            os.system(f"ipcrm {flag} {obj[2]} 2>/dev/null")
    if leaked:
        pytest.fail(f"IPC objects leaked by the test session: {sorted(map(str, leaked))}", pytrace=False)


@pytest.fixture()
def tmp_ipc_dir():
    """A short private directory for socket files and FIFOs (sun_path is only 107 bytes)."""
    d = tempfile.mkdtemp(prefix=f"ipcraft-{TOKEN}-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)

class PeakGrowth:
    """What :func:`peak_rss` measured: ``kib`` is how far the peak RSS rose above the RSS at the start."""

    kib = 0


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@contextmanager
def measure_peak_rss(bound_kib: int, what: str) -> Iterator[PeakGrowth]:
    """Measure the peak resident set size over the block and fail if it rose more than ``bound_kib``.

    Writing 5 to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the current RSS,
    so VmHWM at the end is the peak reached inside the block, not earlier in the test session.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_kib("VmRSS")
    growth = PeakGrowth()
    yield growth
    growth.kib = _status_kib("VmHWM") - start
    assert growth.kib <= bound_kib, f"{what}: peak RSS rose by {growth.kib} KiB, over the bound of {bound_kib} KiB"


@pytest.fixture()
def peak_rss() -> Callable[[int, str], AbstractContextManager[PeakGrowth]]:
    """``with peak_rss(bound_kib, what) as growth:``: fail if the block's peak RSS rises over the bound."""
    return measure_peak_rss

#: Figures the load, fault and fuzz suites report, printed in the run's summary (passing tests'
#: output is captured, so a print alone would not show in CI).
_FIGURES: list[str] = []


@pytest.fixture
def figures(request):
    """``figures(line)`` records a figure for the end-of-run summary (and prints it, for ``-s``)."""

    def add(line: str) -> None:
        _FIGURES.append(f"{request.node.name}: {line}")
        print(line)

    return add


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures (load, faults, fuzz)")
        for line in _FIGURES:
            terminalreporter.write_line(line)
