"""``ipcraft tour``: each mechanism live between real processes, narrated with what was measured.

The steps live in ipcraft._tour (no click or rich there); this module runs them and renders each:
with rich (a panel per mechanism, colours) when stdout is a terminal, as plain text otherwise.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import click

from .._tour import STEPS, Step, run

_WHO_STYLE = ("cyan", "magenta", "green", "yellow", "blue")


@click.command("tour")
@click.argument("mechanism", required=False, type=click.Choice(list(STEPS)))
def tour(mechanism: str | None) -> None:
    """Show MECHANISM (or every one, in teaching order) live between real processes.

    Each step says what the kernel does, then runs it (forked processes, real kernel objects,
    removed at the end) and narrates what each process saw, with the times measured on this
    machine: a writer asleep on a full pipe, a FIFO open failing with ENXIO, System V messages
    fetched by type, POSIX ones by priority, a process asleep on a semaphore, readers sharing
    memory, stream and seqpacket sockets, a signal carrying a payload, a dead process's lock freed
    by the kernel, eventfd's counter, a robust mutex reporting its dead owner.
    """
    names = [mechanism] if mechanism else list(STEPS)
    rich = sys.stdout.isatty()
    failed = []
    for i, name in enumerate(names, 1):
        try:
            step = run(name)
        except Exception as exc:  # noqa: BLE001 - one step failing does not hide the others
            failed.append(name)
            click.echo(f"{name}: could not run here: {type(exc).__name__}: {exc}", err=True)
            continue
        (_render_rich if rich else _render_plain)(step, f"{i}/{len(names)}")
    if failed:
        raise click.ClickException(f"{len(failed)} step(s) failed: {', '.join(failed)}")


def _stamp(t: float) -> str:
    return f"+{t * 1e3:.1f} ms".rjust(11)


def _render_plain(step: Step, counter: str) -> None:
    lines = [f"{counter} {step.title}", *textwrap.wrap(step.kernel, 96, initial_indent="    ",
                                                       subsequent_indent="    ")]
    width = max(len(e.who) for e in step.events)
    for e in step.events:
        lines.append(f"  {_stamp(e.t)}  {e.who:<{width}}  {e.text}")
    click.echo("\n".join(lines) + "\n")


def _render_rich(step: Step, counter: str) -> None:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    colours: dict[str, str] = {}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(justify="right", style="dim", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column()
    for e in step.events:
        style: Any = "bold red" if e.who == "kernel" else colours.setdefault(
            e.who, _WHO_STYLE[len(colours) % len(_WHO_STYLE)])
        table.add_row(_stamp(e.t), Text(e.who, style=style), e.text)
    Console().print(Panel(Group(Text(step.kernel, style="italic"), Text(""), table),
                          title=f"[bold]{counter} {step.title}[/]", title_align="left"))
