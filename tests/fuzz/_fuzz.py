"""The fuzz driver: hypothesis targets that run for a time budget and report how many inputs they tried.

Each target draws inputs from a strategy that mixes random bytes (or text) with *mutations* of the seed
corpus kept in ``tests/fuzz/corpus/<target>/`` (valid inputs: frames, URLs, encoded messages, ring
records), so that generated inputs get past the first checks and reach the deep paths.  A target
runs hypothesis again and again, 200 examples at a time, until its budget is spent:
``IPCRAFT_FUZZ_SECONDS`` (default 3) seconds per target.  A failure is shrunk by hypothesis and
reported with the smallest input that fails; add that input to the corpus once fixed.

Hypothesis and not atheris: hypothesis is already a test dependency, runs inside pytest with its
fixtures, timeouts and the session's leak check, shrinks failures to a minimal input and needs no
instrumented build; atheris's coverage guidance would only see the Python code, not the C extension
(which would need a clang libFuzzer build), and adds a native dependency with no wheels for every
Python this project supports.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

BUDGET = float(os.environ.get("IPCRAFT_FUZZ_SECONDS", "3"))
CORPUS = Path(__file__).parent / "corpus"
#: inputs tried and seconds spent, per target, printed at the end of the run
COUNTS: dict[str, tuple[int, float]] = {}

_INTERESTING = [0, 1, 7, 8, 9, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1]


def corpus(target: str) -> list[bytes]:
    """The seed inputs of ``target`` (every file in its corpus folder)."""
    folder = CORPUS / target
    seeds = [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]
    assert seeds, f"the seed corpus {folder} is empty"
    return seeds


@st.composite
def mutations(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """A seed with up to 8 edits: overwrite, insert, delete, truncate, or a boundary integer written
    in little-endian (lengths and offsets are where parsers break)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.binary(max_size=16))
        elif op == 2:
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == 3:
            del data[pos:]
        else:
            value = draw(st.sampled_from(_INTERESTING))
            width = draw(st.sampled_from([1, 2, 4, 8]))
            data[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(data)


def seeded_bytes(target: str, max_size: int = 1024) -> st.SearchStrategy[bytes]:
    """Mutated seeds of ``target`` three times out of four, else plain random bytes."""
    seeds = corpus(target)
    return st.one_of(mutations(seeds), mutations(seeds), mutations(seeds), st.binary(max_size=max_size))


def run_fuzz(name: str, strategy: st.SearchStrategy[Any], body: Callable[[Any], None],
             budget: float = BUDGET) -> int:
    """Feed ``body`` inputs drawn from ``strategy`` until ``budget`` seconds have passed; return how
    many it tried.  ``body`` fails the run by raising (any exception it does not expect) or hanging
    (pytest-timeout)."""
    tried = 0

    def one(value: Any) -> None:
        nonlocal tried
        tried += 1
        body(value)

    test = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=(Phase.explicit, Phase.generate, Phase.shrink))(given(strategy)(one))
    start = time.monotonic()
    while True:
        test()
        if time.monotonic() - start >= budget:
            break
    elapsed = time.monotonic() - start
    COUNTS[name] = (tried, elapsed)
    print(f"fuzz {name}: {tried} inputs in {elapsed:.1f} s")
    return tried


