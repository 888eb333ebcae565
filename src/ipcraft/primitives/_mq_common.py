"""The kernel knobs that limit the two message-queue primitives, read when needed.

Each knob is named by its /proc file, because that is what an error message tells a user to look at
or change.  Knobs are read at call time: an administrator may change them while a
program runs.  (ipcraft.limits reports the same knobs, but a primitive may not import it: it is a higher layer.)
"""

from __future__ import annotations

import resource

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
