"""What the commands share: the --format option, tables, and turning errors into one-line messages."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ..errors import IPCError

F = TypeVar("F", bound=Callable[..., Any])

#: ``--format table|json``, on every listing command.
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="A table for people, or JSON (a list of objects) for programs.")


def cli_errors(func: F) -> F:
    """Report the errors a user can cause or meet as one line and exit status 1, never a traceback.

    Ctrl-C exits with status 130 and a closed stdout (``| head``) quietly, as shell tools do.
    """
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        except BrokenPipeError:
            # Nobody reads stdout any more: say nothing, and keep the exit-time flush quiet too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        except (IPCError, OSError, ValueError, KeyError, NotImplementedError, EOFError) as exc:
            raise click.ClickException(message(exc)) from None
    return wrapper  # type: ignore[return-value]


def message(exc: BaseException) -> str:
    """One line naming what failed; KeyError's quotes and OSError's ``[Errno n]`` left out."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, IPCError):
        text = exc.strerror
        if exc.filename and str(exc.filename) not in text:
            text += f": {exc.filename}"
        return text
    return str(exc) or type(exc).__name__


def print_json(rows: Sequence[dict[str, Any]]) -> None:
    click.echo(json.dumps(list(rows), indent=2))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                right: Sequence[str] = ()) -> None:
    """A rich table on stdout; piped output is never squeezed to 80 columns or truncated."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    if sys.stdout.isatty():
        Console(highlight=False).print(table)
        return
    # Piped: as wide as the content (never squeezed to 80 columns), without trailing blanks.
    console = Console(width=10_000, highlight=False, color_system=None)
    with console.capture() as cap:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in cap.get().splitlines()))
