"""``ipcraft recv``: print the messages arriving at an endpoint, socat style."""

from __future__ import annotations

import sys

import click

from .. import Publisher
from ..errors import ChannelClosed, Timeout
from ._common import cli_errors
from ._open import ENDPOINT_HELP, FRAMING_CHOICE, FRAMING_HELP, open_endpoint, show


@click.command("recv", epilog=ENDPOINT_HELP)
@click.argument("endpoint")
@click.option("--count", "-n", type=click.IntRange(min=1), default=None,
              help="Stop after this many messages (an error if the peer closes or --timeout passes first).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for the peer and for each message.  Without --count, a quiet "
                   "spell this long ends the command normally (how to drain a queue).")
@click.option("--raw", is_flag=True, help="Write each message's bytes to stdout as they are, with "
              "nothing between messages (objects arrive in their serialized form).")
@click.option("--framing", type=FRAMING_CHOICE, default=None, help=FRAMING_HELP)
@cli_errors
def recv(endpoint: str, count: int | None, timeout: float | None, raw: bool, framing: str | None) -> None:
    """Print the messages arriving at ENDPOINT, one per line, until the peer closes.

    Text is printed as it is; bytes that are not printable text are shown as a Python bytes
    literal, other objects as JSON.  A queue has no end: use --count or --timeout.
    """
    handle = open_endpoint(endpoint, timeout, framing)
    got = 0
    out = sys.stdout.buffer
    with handle:
        if isinstance(handle, Publisher):
            raise click.BadParameter(f"{endpoint!r} only sends: receive from subscribe:URL instead")
        while count is None or got < count:
            try:
                if raw:
                    out.write(handle.recv_bytes(timeout=timeout))
                    out.flush()
                else:
                    click.echo(show(handle.recv(timeout=timeout)))
            except ChannelClosed:
                if count is not None:
                    raise click.ClickException(f"the peer closed after {got} of {count} messages") from None
                return
            except Timeout:
                if count is not None:
                    raise click.ClickException(f"timed out after {timeout} s with {got} of {count} "
                                               "messages") from None
                return
            got += 1
