"""The ``ipcraft`` command.  The only place click and rich are imported."""

from __future__ import annotations

import click

from .._version import __version__
from .bench import bench


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ipcraft")
def cli() -> None:
    """Every classic Unix IPC mechanism, measured, listed and driven from the shell."""


cli.add_command(bench)


def main() -> None:
    """Entry point of the ``ipcraft`` console script and ``python -m ipcraft``."""
    cli()


# ls, rm, limits, send, recv, relay, tour, keygen: one module per command.
from .inventory import ls, rm  # noqa: E402
from .keygen import keygen  # noqa: E402
from .limits import limits  # noqa: E402
from .recv import recv  # noqa: E402
from .relay import relay  # noqa: E402
from .send import send  # noqa: E402
from .tour import tour  # noqa: E402

for _command in (ls, rm, limits, send, recv, relay, tour, keygen):
    cli.add_command(_command)
