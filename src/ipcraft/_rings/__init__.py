"""The two shared-memory ring engines, each a Python module over its C twin in ``ipcraft._native``.

* :mod:`.spsc` — the **single-producer single-consumer** ring of ``shm://`` (C: ``spsc.h``, ``spsc.c``,
  ``spsc_port.c``).  Two per connection, one each way; waits sleep on an eventfd.
* :mod:`.mpmc` — the **multi-producer multi-consumer** ring of ``ring://`` and ``file://`` (C:
  ``mpmc.h``, ``mpmc.c``, ``mpmc_port.c``).  Robust locks, futex waits, durable in a file.

One vocabulary across both and down to C:

* a process's handle on a ring is a **port**: ``SpscPort`` / ``MpmcPort`` here, the C types of the same
  names in ``_native``;
* zero copy uses the same verbs from the transport to C: a sender ``reserve(n)``\\ s room, fills it in
  place, then ``commit``\\ s it (publishes) or ``abort``\\ s it; a receiver ``peek``\\ s at the next
  record in place, then ``consume``\\ s it (drops it) or ``unpeek``\\ s it (leaves it for later).  The
  channel's ``send_view()`` and ``recv_view()`` are these two pairs as context managers;
* ``try_send``/``try_recv`` are the channel's fast path: done at once in C, or False/None for the
  general path.

What they share in C (``rings.h``): the spin helper, the GIL-free wait loop that comes back for signal
handlers, and the one sentinel a wait slice returns to ask for the GIL.  Their byte layouts differ
and are described in each module; neither attaches to the other's memory (different magics).
"""

from __future__ import annotations


def check_native_layout(compiled: dict[str, int], namespace: dict[str, object], what: str) -> None:
    """Refuse to run when the constants compiled into _native differ from ``namespace``'s (a stale build
    would misread every shared header)."""
    mine = {k: v for k, v in namespace.items() if k in compiled}
    if mine != compiled:
        raise ImportError(f"ipcraft._native was built with another {what} layout: {compiled} != {mine}; "
                          "rebuild it (pip install -e .)")


def pow2_capacity(n: int, minimum: int, maximum: int) -> int:
    """The data-area size used for a requested capacity ``n``: the next power of two, at least
    ``minimum``; ValueError beyond ``maximum``."""
    if n > maximum:
        raise ValueError(f"a ring capacity of {n} bytes exceeds ipcraft's maximum of {maximum}")
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())
