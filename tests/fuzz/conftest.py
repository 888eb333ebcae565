"""Hooks of the fuzz suite: its marker and time limit, and the count of inputs each target tried.

The driver and the corpus strategies are in _fuzz.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from _fuzz import BUDGET, COUNTS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the fuzz tests (``-m fuzz`` runs them alone) and let each run for its budget and more."""
    for item in items:
        if item.nodeid.startswith("tests/fuzz/") or "/fuzz/" in str(item.path):
            item.add_marker(pytest.mark.fuzz)
            item.add_marker(pytest.mark.timeout(BUDGET * 4 + 120))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if COUNTS:
        terminalreporter.section("fuzz: inputs tried")
        for name, (tried, elapsed) in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{name}: {tried} inputs in {elapsed:.1f} s")
