"""Fixtures shared by the primitives' tests."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import pytest


@pytest.fixture()
def shm() -> Iterator[mmap.mmap]:
    """A shared anonymous mapping, inherited by every child forked during the test."""
    buf = mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED)
    yield buf
    try:
        buf.close()
    except BufferError:
        pass  # a test failed with a handle open; the mapping goes with the process
