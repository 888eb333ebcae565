"""``ipcraft send``: send messages to an endpoint, socat style."""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import stat
import struct
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import click

from .. import Channel, Subscriber
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

    Over a Unix or TCP socket the command then waits (up to --timeout) until the peer has taken
    every byte out of the kernel's buffers (a TCP peer's kernel has acknowledged them): if the peer
    closes first, leaving messages unread, they are lost and the status is 1.
    """
    if raw and (messages or as_json):
        raise click.UsageError("--raw sends stdin as it is; it takes no MESSAGE arguments and no --json")
    handle = open_endpoint(endpoint, timeout, framing)
    with handle:
        if isinstance(handle, Subscriber):
            raise click.BadParameter(f"{endpoint!r} only receives: send to publish:URL instead")
        for data in _messages(messages, raw, chunk):
            if as_json:
                try:
                    obj: Any = json.loads(data)
                except ValueError as exc:
                    raise click.ClickException(f"not JSON: {data[:60]!r}: {exc}") from None
                handle.send(obj, timeout=timeout)
            else:
                handle.send_bytes(data, timeout=timeout)
        if isinstance(handle, Channel):
            _await_delivery(handle.fileno(), timeout)


def _await_delivery(fd: int, timeout: float | None) -> None:
    """Wait until the peer of the connected socket ``fd`` has consumed what was sent, or fail.

    SIOCOUTQ is what is still queued: for AF_UNIX the bytes the peer has not read yet, for TCP
    those its kernel has not acknowledged.  A peer that closes with unread bytes resets the
    connection (SO_ERROR becomes ECONNRESET): its messages are lost.  Not a socket (shm://, a
    pipe): nothing to wait for here.
    """
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        return
    sock = socket.socket(fileno=os.dup(fd))
    with sock:
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLHUP)
        while True:
            queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise click.ClickException(f"the peer closed the connection before reading everything "
                                           f"({os.strerror(error)}): messages were lost")
            if queued == 0:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise click.ClickException(f"the peer has not read the last {queued} bytes after "
                                           f"{timeout:g} s: they may be lost")
            poller.poll(10)  # wakes at once when the peer hangs up; otherwise look again in 10 ms


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
