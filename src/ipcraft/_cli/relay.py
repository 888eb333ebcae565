"""``ipcraft relay``: move messages between two endpoints, socat style.

The work is ipcraft.relay() (``_relay.py``): one thread per direction, frames forwarded without
decoding when both sides use the same serializer, at most one message in flight per direction
(backpressure), and a clean end when either side closes.
"""

from __future__ import annotations

import click

from .._relay import relay as _relay
from ._common import cli_errors
from ._open import ENDPOINT_HELP, FRAMING_CHOICE, open_endpoint


@click.command("relay", epilog=ENDPOINT_HELP)
@click.argument("endpoint_a")
@click.argument("endpoint_b")
@click.option("--one-way", is_flag=True, help="Only move messages from ENDPOINT_A to ENDPOINT_B.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for each peer (connect, accept).")
@click.option("--framing-a", type=FRAMING_CHOICE, default=None,
              help="ENDPOINT_A's framing (see ipcraft send --help), e.g. lines to relay what socat writes.")
@click.option("--framing-b", type=FRAMING_CHOICE, default=None, help="ENDPOINT_B's framing.")
@cli_errors
def relay(endpoint_a: str, endpoint_b: str, one_way: bool, timeout: float | None, framing_a: str | None,
          framing_b: str | None) -> None:
    """Move messages between ENDPOINT_A and ENDPOINT_B, both ways, until either side closes.

    An endpoint that connects or opens is opened before one that listens (else ENDPOINT_A first),
    so that a missing peer stops the relay before anyone can connect to it and lose messages into
    it.  When either endpoint is a queue, messages only move from ENDPOINT_A to ENDPOINT_B: a queue
    has no sides, so the relay would read back what it wrote into it.
    """
    b_first = endpoint_a.startswith("listen:") and not endpoint_b.startswith("listen:")
    first = (open_endpoint(endpoint_b, timeout, framing_b) if b_first
             else open_endpoint(endpoint_a, timeout, framing_a))
    with first:
        second = (open_endpoint(endpoint_a, timeout, framing_a) if b_first
                  else open_endpoint(endpoint_b, timeout, framing_b))
        with second:
            a, b = (second, first) if b_first else (first, second)
            _relay(a, b, one_way=one_way)
