"""``ipcraft ls`` and ``ipcraft rm``: thin over the public :mod:`ipcraft.inventory`."""

from __future__ import annotations

import os
import pwd
import warnings
from typing import Any

import click

from .. import inventory
from ._common import cli_errors, format_option, message, print_json, print_table

_KIND_CHOICE = click.Choice([*inventory.KINDS, *(k.replace("_", "-") for k in inventory.KINDS)])
# The facts worth a column in the table, per kind (everything is in --format json).
_DETAILS = {"posix_sem": ("value",), "posix_mq": ("maxmsg", "msgsize"), "sysv_shm": ("nattch", "status"),
            "sysv_sem": ("nsems",), "sysv_mq": ("lspid", "lrpid"), "unix_socket": ("type", "state")}


@click.command("ls")
@click.option("--kind", "-k", "kinds", multiple=True, type=_KIND_CHOICE, metavar="KIND",
              help=f"Only this kind (repeatable): {', '.join(inventory.KINDS)}. Default: every kind.")
@click.option("--dir", "-d", "dirs", multiple=True, type=click.Path(file_okay=False),
              help="Also list the FIFOs and unbound socket files in this directory (repeatable); "
                   "FIFOs cannot be listed machine-wide.")
@click.option("--no-pids", is_flag=True, help="Do not scan /proc/*/fd for the processes holding sockets.")
@click.option("--mine", is_flag=True, help="Only objects owned by you.")
@format_option
@cli_errors
def ls(kinds: tuple[str, ...], dirs: tuple[str, ...], no_pids: bool, mine: bool, fmt: str) -> None:
    """List the IPC objects on this machine.

    POSIX shared memory and semaphores (/dev/shm), ipcraft broadcast rings (bcast://, in /dev/shm:
    each subscriber's pid and lag), POSIX message queues (the mqueue filesystem),
    System V queues, semaphore sets and shared memory (/proc/sysvipc), named Unix sockets
    (sock_diag or /proc/net/unix), and the FIFOs in the --dir directories.
    """
    objs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in dict.fromkeys(k.replace("-", "_") for k in kinds) or [None]:
            objs += inventory.list_objects(kind, dirs=dirs, find_pids=not no_pids)
    for w in caught:
        click.echo(f"note: {w.message}", err=True)
    if mine:
        objs = [o for o in objs if o.uid == os.geteuid()]
    if fmt == "json":
        print_json([o.as_dict() for o in objs])
        return
    rows = [_row(o) for o in objs]
    print_table(("KIND", "NAME / KEY", "ID", "OWNER", "MODE", "SIZE", "MSGS", "PID", "DETAILS"), rows,
                right=("ID", "SIZE", "MSGS", "PID"))


def _row(o: inventory.IPCObject) -> tuple[Any, ...]:
    name = o.name if o.key is None else f"{o.key & 0xFFFFFFFF:#010x}"
    details = " ".join(f"{k}={o.details[k]}" for k in _DETAILS.get(o.kind, ()) if o.details.get(k) not in (None, ""))
    if o.kind == "bcast":
        details = _bcast_details(o.details)
    mode = None if o.mode is None else f"{o.mode:03o}"
    return (o.kind, name, o.id, _user(o.uid), mode, o.size, o.messages, o.pid, details)


def _bcast_details(d: Any) -> str:
    """A broadcast ring: its mode, publishers, and each subscriber as pid:lag (messages behind)."""
    if "damaged" in d:
        return f"damaged: {d['damaged']}"
    subs = " ".join(f"{s['pid']}:lag={s['lag_messages']}" + ("" if s["state"] == "live" else f"({s['state']})")
                    + ("" if s["alive"] else "(dead)") + (f",missed={s['missed']}" if s["missed"] else "")
                    for s in d.get("subscribers", ()))
    pubs = ",".join(str(p) for p in d.get("publishers", ())) or "-"
    return f"{d.get('on_slow')} published={d.get('published')} publishers={pubs} subscribers: {subs or '-'}"


def _user(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@click.command("rm")
@click.argument("kind", type=_KIND_CHOICE, metavar="KIND")
@click.argument("names", nargs=-1, required=True)
@click.option("--id", "by_id", is_flag=True, help="System V: the NAMES are ids, not keys.")
@click.option("--force", "-f", is_flag=True, help="Also remove objects other users own (permissions allowing).")
@cli_errors
def rm(kind: str, names: tuple[str, ...], by_id: bool, force: bool) -> None:
    """Remove IPC objects: rm KIND NAME...

    KIND is posix_shm, posix_sem, bcast, posix_mq, sysv_shm, sysv_sem, sysv_mq, unix_socket or fifo.
    NAME is a POSIX name (/jobs), a System V key (0x4d2, or an id with --id), or the path (or
    @name) of a socket or FIFO.  Objects other users own are refused unless --force.  A socket file
    is removed only when no socket is bound to it.
    """
    failed = 0
    for name in names:
        try:
            obj = inventory.lookup(kind, name, by_id=by_id)
            if obj.uid != os.geteuid() and not force:
                owner = "its owner is unknown" if obj.uid is None else f"it belongs to {_user(obj.uid)}"
                raise PermissionError(f"refusing to remove {obj.label}: {owner} (you are "
                                      f"{_user(os.geteuid())}); pass --force to remove it anyway")
            inventory.remove(obj)
        except (OSError, ValueError) as exc:
            click.echo(f"Error: {message(exc)}", err=True)
            failed += 1
            continue
        click.echo(f"removed {obj.label}")
    if failed:
        raise SystemExit(1)
