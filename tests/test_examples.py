"""Every example in examples/ runs as real processes and says what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, tmp_ipc_dir: str) -> str:
    env = dict(os.environ, IPCRAFT_EXAMPLE_SOCK=os.path.join(tmp_ipc_dir, "demo.sock"))
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                          timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(40)
def test_two_processes_example_round_trips(tmp_ipc_dir: str) -> None:
    """The README example: the child's message reaches the parent and the reply names the child."""
    out = run_example("two_processes.py", tmp_ipc_dir)
    assert out.startswith("child got {'done': 42, 'peer_pid': ")
    assert not os.path.exists(os.path.join(tmp_ipc_dir, "demo.sock"))  # the listener removed it


@pytest.mark.timeout(40)
def test_pipe_workers_example_collects_every_result(tmp_ipc_dir: str) -> None:
    """Two forked workers square their jobs over ipcraft.pipe() channels."""
    assert run_example("pipe_workers.py", tmp_ipc_dir).strip() == "results [9, 16]"
