"""Shared by the two message-queue primitives: the kernel knobs that limit them, and waiting by polling.

Each knob is named by its /proc file, because that is what an error message tells a user to look at
or change (STYLE.md R11).  Knobs are read when needed: they can change at run time.

System V message queues have no timed wait and no file descriptor, so a wait with a timeout polls
(:func:`poll_with_backoff`): the first retries come quickly (a reply that is already on its way is
picked up within about as long as it took), later ones every :data:`POLL_MAX_DELAY` seconds.  Each
poll wakes a vCPU, which costs 30-50 us on this class of VM, so the cap sets the CPU a long wait
burns.  Measured on the 2-vCPU development VM (benchmarks/mq_overhead.py --poll-cost), under
varying load from other work: a 4 ms cap costs 1.5-2.8 % of a core (worst single wait 4.1 %), 2 ms
about 3.4 %, 1 ms about 4.2 %.  The deadline itself is kept to within a timer slack (0.1-0.4 ms
late): the last sleep is cut to the time left.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import Timeout

_T = TypeVar("_T")

#: First and largest pause between two polls, in seconds.
POLL_FIRST_DELAY = 50e-6
POLL_MAX_DELAY = 0.004

MQ_MSG_MAX = "/proc/sys/fs/mqueue/msg_max"
MQ_MSGSIZE_MAX = "/proc/sys/fs/mqueue/msgsize_max"
MQ_MSG_DEFAULT = "/proc/sys/fs/mqueue/msg_default"
MQ_MSGSIZE_DEFAULT = "/proc/sys/fs/mqueue/msgsize_default"
MQ_QUEUES_MAX = "/proc/sys/fs/mqueue/queues_max"
MSGMAX = "/proc/sys/kernel/msgmax"
MSGMNB = "/proc/sys/kernel/msgmnb"
MSGMNI = "/proc/sys/kernel/msgmni"

#: Linux's fallbacks where a /proc file cannot be read (include/linux/ipc_namespace.h, ipc/msgutil.c).
_DEFAULTS = {MQ_MSG_MAX: 10, MQ_MSGSIZE_MAX: 8192, MQ_MSG_DEFAULT: 10, MQ_MSGSIZE_DEFAULT: 8192,
             MQ_QUEUES_MAX: 256, MSGMAX: 8192, MSGMNB: 16384, MSGMNI: 32000}


def read(path: str) -> int:
    """The knob's current value (Linux's default if the file cannot be read)."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return _DEFAULTS[path]


def describe(path: str) -> str:
    """``"/proc/sys/kernel/msgmax = 8192"``: a knob and its value, for error messages."""
    return f"{path} = {read(path)}"


def rlimit_msgqueue() -> str:
    """The RLIMIT_MSGQUEUE soft limit as a phrase for error messages."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    value = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
    return f"RLIMIT_MSGQUEUE (ulimit -q) = {value} per user"


def start_wait(timeout: float | None) -> float:
    """The time.monotonic() a wait of ``timeout`` seconds starts (0.0 if it has no timeout)."""
    if timeout is None:
        return 0.0
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout}")
    return time.monotonic()


def time_left(start: float, timeout: float | None) -> float | None:
    """Seconds left of a wait of ``timeout`` begun at ``start``; never negative (None: no timeout)."""
    return None if timeout is None else max(0.0, start + timeout - time.monotonic())


def poll_with_backoff(attempt: Callable[[], _T], deadline: float) -> _T:
    """Call ``attempt`` until it returns, sleeping between tries while it raises Timeout.

    ``attempt`` raises :class:`Timeout` for "not now" (a full or empty queue); once ``deadline``
    (time.monotonic()) has passed, the last Timeout propagates.  Anything else propagates at once.
    """
    delay = POLL_FIRST_DELAY
    while True:
        try:
            return attempt()
        except Timeout:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
        time.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX_DELAY)
