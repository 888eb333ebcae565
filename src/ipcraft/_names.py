"""Validation of names for named kernel objects, and ipcraft's permission defaults.

Names are checked before the kernel sees them, so a bad one is an :class:`InvalidEndpoint` that says
what is wrong, not an EINVAL from deep inside a call.
"""

from __future__ import annotations

import os

from .errors import InvalidEndpoint

#: Everything named is created owner-only unless the caller asks otherwise.
DEFAULT_MODE = 0o600

#: sun_path is 108 bytes on Linux, one of which is the terminating NUL (abstract names have no NUL
#: but the same room).
UNIX_PATH_MAX = 107

#: NAME_MAX for a file in /dev/shm or /dev/mqueue.
NAME_MAX = 255


def validate_name(name: str, kind: str, max_len: int = NAME_MAX) -> str:
    """Check that ``name`` is a single path component usable for a ``kind`` and return it.

    A leading ``/`` (POSIX IPC style) is accepted and stripped.  Raises InvalidEndpoint naming the
    problem: empty, ``.``/``..``, a ``/`` or NUL inside, or longer than ``max_len`` bytes.
    """
    if not isinstance(name, str):
        raise InvalidEndpoint(f"a {kind} name must be a str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare:
        raise InvalidEndpoint(f"a {kind} name must not be empty")
    if bare in (".", ".."):
        raise InvalidEndpoint(f"{name!r} is not a valid {kind} name")
    if "/" in bare or "\0" in bare:
        raise InvalidEndpoint(f"a {kind} name must be one path component without '/' or NUL: {name!r}")
    size = len(_fsencode(bare, kind))
    if size > max_len:
        raise InvalidEndpoint(f"the {kind} name {name!a} is {size} bytes; the limit is {max_len}")
    return bare


def validate_unix_path(path: str, abstract: bool = False) -> bytes:
    """Return the sun_path bytes for a Unix socket path or abstract name, checking its length.

    The kernel silently refuses (or, on some systems, truncates) a path longer than sun_path; ipcraft
    explains the limit instead and suggests the usual way around it.  An abstract name is any bytes,
    NULs included (the kernel compares all ``addrlen`` bytes), so the address a datagram receive
    reports for a C peer bound with ``addrlen = sizeof(struct sockaddr_un)`` can be sent back to.
    """
    raw = _fsencode(path, "Unix socket")
    if b"\0" in raw and not abstract:
        raise InvalidEndpoint(f"a Unix socket address must not contain NUL: {path!r}")
    if not raw:
        raise InvalidEndpoint("a Unix socket address must not be empty")
    if len(raw) > UNIX_PATH_MAX:
        what = "abstract name" if abstract else "path"
        raise InvalidEndpoint(
            f"the Unix socket {what} {path!r} is {len(raw)} bytes; the kernel allows {UNIX_PATH_MAX} "
            "(sun_path in <sys/un.h> is 108 bytes with the NUL). Use a shorter path, a path relative "
            "to a chdir'ed directory, or an abstract name (unix:@name)")
    return b"\0" + raw if abstract else raw


def _fsencode(name: str, kind: str) -> bytes:
    """``os.fsencode(name)``, refusing with InvalidEndpoint what cannot be encoded (a lone surrogate)."""
    try:
        return os.fsencode(name)
    except UnicodeError as exc:
        raise InvalidEndpoint(f"the {kind} name {name!a} cannot be encoded for the kernel ({exc})") from exc
