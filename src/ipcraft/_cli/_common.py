"""What the commands share: the --format option, tables, and turning errors into one-line messages."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click

from ..errors import IPCError

F = TypeVar("F", bound=Callable[..., Any])

#: ``--format table|json``, on every listing command.
format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="A table for people, or JSON (a list of objects) for programs.")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM (or SIGHUP) arrives, so that ``with`` blocks unwind and
    whatever the command created is removed, as for Ctrl-C.  A KeyboardInterrupt: no ``except
    Exception`` swallows it, and posix_ipc and sysv_ipc, which replace any other exception a signal
    handler raises during a wait with their own SignalError, pass it through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM and SIGHUP raise Terminated (unless they were ignored, as
    ``nohup`` does).  The default action would end the process at once, skipping every cleanup:
    ``timeout``, systemd and container runtimes stop processes with SIGTERM."""
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, _raise_terminated)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cli_errors(func: F) -> F:
    """Report the errors a user can cause or meet as one line and exit status 1, never a traceback.

    Ctrl-C exits with status 130, SIGTERM and SIGHUP with 128 + the signal's number, after removing
    what the command created (``with`` blocks unwind); a closed stdout (``| head``) exits quietly, as
    shell tools do.
    """
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _terminate_like_interrupt():
                return func(*args, **kwargs)
        except click.ClickException:
            raise
        except Terminated as exc:
            raise SystemExit(128 + exc.signum) from None
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
