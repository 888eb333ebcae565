"""``ipcraft send``: send messages to an endpoint, socat style."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from ._common import cli_errors
from ._open import ENDPOINT_HELP, FRAMING_CHOICE, FRAMING_HELP, open_endpoint


@click.command("send", epilog=ENDPOINT_HELP)
@click.argument("endpoint")
@click.argument("messages", nargs=-1)
@click.option("--raw", is_flag=True, help="Send stdin as it arrives, one message per read (up to "
              "--chunk bytes), instead of one message per line.")
@click.option("--chunk", type=click.IntRange(min=1), default=65536, show_default=True,
              help="With --raw: the largest message, in bytes.")
@click.option("--json", "as_json", is_flag=True, help="Each message is JSON: send the object it "
              "describes through the endpoint's serializer instead of its text as bytes.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for the peer (connect, accept) and for room to send each message.")
@click.option("--framing", type=FRAMING_CHOICE, default=None, help=FRAMING_HELP)
@cli_errors
def send(endpoint: str, messages: tuple[str, ...], raw: bool, chunk: int, as_json: bool,
         timeout: float | None, framing: str | None) -> None:
    """Send each MESSAGE argument, or else each line of stdin, as one message to ENDPOINT.

    A message is sent as bytes (UTF-8 text), which the receiver's recv() returns as bytes; --json
    sends objects instead.  The connection is closed at the end, so the peer sees the end of stream.
    """
    if raw and (messages or as_json):
        raise click.UsageError("--raw sends stdin as it is; it takes no MESSAGE arguments and no --json")
    handle = open_endpoint(endpoint, timeout, framing)
    with handle:
        for data in _messages(messages, raw, chunk):
            if as_json:
                try:
                    obj: Any = json.loads(data)
                except ValueError as exc:
                    raise click.ClickException(f"not JSON: {data[:60]!r}: {exc}") from None
                handle.send(obj, timeout=timeout)
            else:
                handle.send_bytes(data, timeout=timeout)


def _messages(args: tuple[str, ...], raw: bool, chunk: int) -> Iterator[bytes]:
    if args:
        yield from (os.fsencode(a) for a in args)
    elif raw:
        stdin: Any = sys.stdin.buffer  # a BufferedReader (read1) for a file, pipe or terminal
        while data := stdin.read1(chunk):  # what one read() returns: messages as the data arrives
            yield data
    else:
        for line in sys.stdin.buffer:
            yield line[:-1] if line.endswith(b"\n") else line
