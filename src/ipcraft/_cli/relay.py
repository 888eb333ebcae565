"""``ipcraft relay``: move messages between two endpoints, socat style.

One thread per direction, each receiving with a short timeout so that it notices when the other
direction has ended; this works for every scheme, including those without a file descriptor to poll
(System V queues).  A message sent as bytes is forwarded as bytes; an object is decoded with one
endpoint's serializer and re-encoded with the other's.
"""

from __future__ import annotations

import threading
from typing import Any

import click

from .. import Queue
from ..errors import ChannelClosed, Timeout
from ._common import cli_errors
from ._open import ENDPOINT_HELP, Handle, open_endpoint

_TICK = 0.1  # how often a direction checks whether the other one has ended


@click.command("relay", epilog=ENDPOINT_HELP)
@click.argument("endpoint_a")
@click.argument("endpoint_b")
@click.option("--one-way", is_flag=True, help="Only move messages from ENDPOINT_A to ENDPOINT_B.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for each peer (connect, accept).")
@cli_errors
def relay(endpoint_a: str, endpoint_b: str, one_way: bool, timeout: float | None) -> None:
    """Move messages between ENDPOINT_A and ENDPOINT_B, both ways, until either side closes.

    An endpoint that connects or opens is opened before one that listens (else ENDPOINT_A first),
    so that a missing peer stops the relay before anyone can connect to it and lose messages into
    it.  When either endpoint is a queue, messages only move from ENDPOINT_A to ENDPOINT_B: a queue
    has no sides, so the relay would read back what it wrote into it.
    """
    b_first = endpoint_a.startswith("listen:") and not endpoint_b.startswith("listen:")
    first = open_endpoint(endpoint_b if b_first else endpoint_a, timeout)
    with first:
        second = open_endpoint(endpoint_a if b_first else endpoint_b, timeout)
        with second:
            a, b = (second, first) if b_first else (first, second)
            stop = threading.Event()
            errors: list[BaseException] = []
            pumps = [threading.Thread(target=_pump, args=(a, b, stop, errors), daemon=True)]
            if not (one_way or isinstance(a, Queue) or isinstance(b, Queue)):
                pumps.append(threading.Thread(target=_pump, args=(b, a, stop, errors), daemon=True))
            for t in pumps:
                t.start()
            try:
                while any(t.is_alive() for t in pumps):
                    for t in pumps:
                        t.join(_TICK)
            finally:
                stop.set()
                for t in pumps:
                    t.join()
            if errors:
                raise errors[0]


def _pump(src: Handle, dst: Handle, stop: threading.Event, errors: list[BaseException]) -> None:
    """Forward src -> dst until src's peer closes, dst's peer goes, or ``stop`` is set."""
    try:
        while not stop.is_set():
            try:
                obj: Any = src.recv(timeout=_TICK)
            except Timeout:
                continue
            if isinstance(obj, bytes):
                dst.send_bytes(obj)
            else:
                dst.send(obj)
    except ChannelClosed:
        pass
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)
    finally:
        stop.set()
