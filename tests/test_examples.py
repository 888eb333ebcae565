"""Every example in examples/ runs as real processes and says what it should.

The docs' mechanism and pattern chapters show these files as they are (mkdocs' snippets), so what a
reader copies is what runs here.  Each example forks its peers itself; it runs in a subprocess with a
timeout, and the session's leak check sees anything it leaves behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: example -> lines its output must contain (in this order).  Every file in examples/ has an entry.
EXPECTED: dict[str, list[str]] = {
    "pipe.py": ["parent read b'hello from the child'"],
    "fifo.py": ["non-blocking write-open fails at once: ENXIO", "reader got ['job 1', 'job 2']"],
    "sysv_mq.py": ["(b'normal', 2)", "(b'urgent', 1)", "(b'report', 3)", "left in the queue: 0"],
    "posix_mq.py": ["[(b'high', 9), (b'middle', 5), (b'low', 1)]"],
    "semaphore.py": ["woke after the post, asleep for at least 0.1 s: True", "value now 0"],
    "shared_memory.py": ["parent sees b'hello'", "and again b'hello'"],
    "mapped_file.py": ["mapped: 42", "in the file: 42"],
    "unix_socket.py": ["client got True"],
    "tcp_socket.py": ["client got 6"],
    "signals.py": ["payload 42 from the child: True"],
    "file_lock.py": ["holder is the child: True", "refused while the child holds it", "acquired after the kill"],
    "eventfd.py": ["one read takes them all: 3", "semaphore mode: 1 1"],
    "robust_mutex.py": ["owner died mid-update: b'half-'", "works on: b'fixed'"],
    "work_queue.py": ["squares [0, 1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121]", "every job once: True"],
    "request_reply.py": [],  # the two clients' lines may come in either order: checked as a set below
    "pipeline.py": ["['PIPES', 'CARRY', 'BYTES']", "['QUEUES', 'CARRY', 'MESSAGES']"],
    "fan_out.py": [],  # three subscribers print in any order: checked as a set below
    "numpy_shared_array.py": ["every cell counted every increment: [3000, 3000, 3000, 3000]"],
    "graceful_shutdown.py": ["ready", "stopped cleanly after 5 jobs", "exit status 0"],
    "two_processes.py": [],  # its own test below
    "pipe_workers.py": ["results [9, 16]"],
}
#: example -> the set of lines its output must consist of, in any order.
UNORDERED: dict[str, set[str]] = {
    "request_reply.py": {"1 + 2 = 3", "40 + 2 = 42"},
    "fan_out.py": {f"subscriber {n} got ['start', 'tick', 'stop']" for n in range(3)},
}


def run_example(name: str, tmp_ipc_dir: str) -> str:
    env = dict(os.environ, IPCRAFT_EXAMPLE_SOCK=os.path.join(tmp_ipc_dir, "demo.sock"))
    env.pop("PYTHONUNBUFFERED", None)  # buffered as when a reader pipes the output: a forked child must flush
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                          timeout=30, env=env, cwd=tmp_ipc_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr  # a forked peer that failed after its parent was done
    return proc.stdout


def test_every_example_has_an_expectation() -> None:
    """A new example must say what it prints, so it cannot pass by printing nothing."""
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)
    assert all(EXPECTED[n] or n in UNORDERED or n == "two_processes.py" for n in EXPECTED)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n != "two_processes.py"))
def test_example_prints_what_it_should(name: str, tmp_ipc_dir: str) -> None:
    """The example exits 0 and its output holds the expected lines, in order (or the expected set)."""
    lines = run_example(name, tmp_ipc_dir).splitlines()
    want = EXPECTED[name]
    found = [line for line in lines if line in want]
    assert found == want, lines
    if name in UNORDERED:
        assert set(lines) == UNORDERED[name] and len(lines) == len(UNORDERED[name]), lines


@pytest.mark.timeout(40)
def test_two_processes_example_round_trips(tmp_ipc_dir: str) -> None:
    """The README example: the child's message reaches the parent and the reply names the child."""
    out = run_example("two_processes.py", tmp_ipc_dir)
    assert out.startswith("child got {'done': 42, 'peer_pid': ")
    assert not os.path.exists(os.path.join(tmp_ipc_dir, "demo.sock"))  # the listener removed it
