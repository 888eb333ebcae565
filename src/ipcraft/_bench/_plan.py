"""What one bench run measures: sizes, iteration counts, repetitions and process placement.

The counts follow the method the peer libraries publish their own figures with:
ping-pong round trips with a warm-up of 10 % (at least 20, at most 1000), and one-way runs whose
length grows as the size shrinks.  Quick mode divides them so that the whole default run stays under a
minute on two cores; ``full`` uses the reference counts and three repetitions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

#: The sizes the issues quote: a small message, a page, a pipe buffer, a large payload.
DEFAULT_SIZES: tuple[int, ...] = (64, 4096, 65536, 1 << 20)
PLACEMENTS = ("cross", "same", "none")
WAITS = ("spin", "block")

# size ceiling -> (round trips, one-way messages); reference counts (full mode).
_FULL_COUNTS = ((64, 20000, 100000), (4096, 20000, 50000), (65536, 5000, 10000), (1 << 62, 1000, 1000))
_QUICK_COUNTS = ((64, 2000, 20000), (4096, 2000, 10000), (65536, 400, 2000), (1 << 62, 60, 150))
_THROUGHPUT_WARMUP = 20

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``"64"``, ``"4K"``, ``"4KiB"``, ``"1M"`` -> bytes (binary units; ``B`` optional)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 64, 4K, 64KiB, 1M)")
    n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise ValueError(f"a message size must be at least 1 byte, not {text!r}")
    return n


def format_size(n: int) -> str:
    """64 -> ``64 B``, 4096 -> ``4 KiB``, 1048576 -> ``1 MiB`` (exact units only)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def placement_cpus(placement: str) -> tuple[int | None, int | None]:
    """The CPUs process A and process B are pinned to (None: not pinned).

    ``cross`` takes the first two CPUs this process may run on (CPU 0 and CPU 1 on the reference
    machine), ``same`` puts both on the first, ``none`` leaves them to the scheduler.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement is one of {', '.join(PLACEMENTS)}, not {placement!r}")
    if placement == "none":
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "same":
        return cpus[0], cpus[0]
    if len(cpus) < 2:
        raise ValueError(f"placement 'cross' needs two CPUs but this process may only run on CPU "
                         f"{cpus[0]}; use --placement same or none")
    return cpus[0], cpus[1]


@dataclass(frozen=True)
class Plan:
    """One bench run's parameters (a frozen value the forked children inherit)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    full: bool = False
    repeat: int = 1
    placement: str = "cross"
    waits: tuple[str, ...] = WAITS
    #: Override of the round trips per size (tests and quick looks).
    iterations: int | None = None
    #: Override of the one-way messages per size.
    count: int | None = None
    #: Seconds a receiver sits idle in a blocking recv to measure its CPU use (0: skip).
    idle: float = 0.0
    #: Seconds one process pair may take for all sizes before it is killed (None: from the counts).
    trial_timeout: float | None = None
    #: glibc M_TOP_PAD for every subject process (0: glibc's default).  By default glibc hands the top
    #: of the heap back to the kernel after each large free, so every fresh 1 MiB result faults its
    #: pages in again; on this kind of VM that costs up to ~1 ms for a process that had gone idle.
    malloc_top_pad: int = 0
    #: CPU-bound neighbour processes (not pinned) that run during the measurement (``--load N``).
    load: int = 0
    cpus: tuple[int | None, int | None] = field(default=(None, None))

    def __post_init__(self) -> None:
        if self.load < 0:
            raise ValueError(f"load is a number of processes, at least 0, not {self.load}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be at least 1, not {self.repeat}")
        for w in self.waits:
            if w not in WAITS:
                raise ValueError(f"wait mode is one of {', '.join(WAITS)}, not {w!r}")
        if self.cpus == (None, None) and self.placement != "none":
            object.__setattr__(self, "cpus", placement_cpus(self.placement))

    def _counts(self, size: int) -> tuple[int, int]:
        for ceiling, rt, oneway in (_FULL_COUNTS if self.full else _QUICK_COUNTS):
            if size <= ceiling:
                return rt, oneway
        raise AssertionError(size)

    def round_trips(self, size: int) -> int:
        """Timed ping-pong round trips at ``size``."""
        return self.iterations if self.iterations is not None else self._counts(size)[0]

    def warmup(self, size: int) -> int:
        """Untimed round trips before the timed ones: 10 %, at least 20, at most 1000."""
        return min(1000, max(20, self.round_trips(size) // 10))

    def messages(self, size: int) -> int:
        """One-way messages in the throughput run at ``size``."""
        return self.count if self.count is not None else self._counts(size)[1]

    @property
    def throughput_warmup(self) -> int:
        return _THROUGHPUT_WARMUP

    def timeout(self) -> float:
        """How long one process pair may run: generous, so only a hang trips it."""
        if self.trial_timeout is not None:
            return self.trial_timeout
        # Budget 20 ms per 1 MiB moved plus 1 ms per message, times 4, plus setup and idle time.
        budget = 0.0
        for size in self.sizes:
            n = self.round_trips(size) + self.warmup(size) + self.messages(size)
            budget += n * (0.001 + 0.02 * size / (1 << 20))
        return 30.0 + 4 * budget + self.idle

    def describe_malloc(self) -> str:
        if not self.malloc_top_pad:
            return "glibc malloc defaults"
        return f"glibc M_TOP_PAD={self.malloc_top_pad} in every subject process"

    def describe_placement(self) -> str:
        a, b = self.cpus
        if self.placement == "none":
            return "none (processes not pinned)"
        return f"{self.placement} (process A on CPU {a}, process B on CPU {b})"
