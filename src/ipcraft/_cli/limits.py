"""``ipcraft limits``: thin over the public :mod:`ipcraft.limits`."""

from __future__ import annotations

import click

from .. import limits as _limits
from ._common import cli_errors, format_option, print_json, print_table


@click.command("limits")
@click.option("--group", "-g", "groups", multiple=True,
              type=click.Choice(["pipe", "posix_mq", "sysv_mq", "sysv_sem", "sysv_shm", "posix_shm",
                                 "socket", "process"]),
              help="Only the limits of this facility (repeatable).")
@format_option
@cli_errors
def limits(groups: tuple[str, ...], fmt: str) -> None:
    """Show the kernel limits that bite IPC: each value, its knob and what it limits.

    Read now from /proc/sys, getrlimit() and statvfs(/dev/shm); an rlimit is this process's soft
    limit, with the hard one beside it.
    """
    found = [lim for lim in _limits.get_limits() if not groups or lim.group in groups]
    if fmt == "json":
        print_json([lim.as_dict() for lim in found])
        return
    rows = [(lim.name, _value(lim.value), lim.unit, lim.source + _hard(lim), lim.meaning) for lim in found]
    print_table(("LIMIT", "VALUE", "UNIT", "SOURCE", "MEANING"), rows, right=("VALUE",))


def _value(v: int | None) -> str:
    return "unlimited" if v is None else str(v)


def _hard(lim: _limits.Limit) -> str:
    return f", hard {_value(lim.hard)}" if lim.source.startswith("getrlimit") else ""
