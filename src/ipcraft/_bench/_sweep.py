"""Leave nothing behind: remove every IPC object a bench run made, even one a killed child left.

Everything the bench names carries the run's tag (Env.name) or lives in its private temp dir
(Env.path), and every System V key it uses is recorded (Env.key), so the sweep can remove exactly the
run's own objects after each trial and at the end, without touching anyone else's.  iceoryx2 keeps
its own management files (/dev/shm/iox2_*, /tmp/iceoryx2); those that appeared during the run are
removed at its end.
"""

from __future__ import annotations

import os
import shutil

from ._harness import Env

_IOX_CONFIG_DIR = "/tmp/iceoryx2"


def sweep(env: Env) -> list[str]:
    """Remove the run's leftovers in /dev/shm, /dev/mqueue and System V; return what was removed."""
    removed: list[str] = []
    marker = f"-{env.tag}"
    for d in ("/dev/shm", "/dev/mqueue"):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if marker in name:
                try:
                    os.unlink(os.path.join(d, name))
                    removed.append(os.path.join(d, name))
                except OSError:
                    pass
    keys = set(env.keys)
    if keys:
        removed += _sweep_sysv(keys)
    return removed


def _sweep_sysv(keys: set[int]) -> list[str]:
    try:
        import sysv_ipc
    except ImportError:
        return []
    removers = {"msg": sysv_ipc.remove_message_queue, "shm": sysv_ipc.remove_shared_memory,
                "sem": sysv_ipc.remove_semaphore}
    removed = []
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                next(f)
                rows = [line.split() for line in f]
        except (OSError, StopIteration):
            continue
        for row in rows:
            key, ident = int(row[0]), int(row[1])
            if key in keys or (key & 0xFFFFFFFF) in keys:
                try:
                    remove(ident)
                    removed.append(f"System V {kind} key {key:#x}")
                except Exception:  # noqa: BLE001 - gone meanwhile
                    pass
    return removed


class IceoryxFiles:
    """What iceoryx2 had on disk before the run, to remove only what appeared during it."""

    def __init__(self) -> None:
        self.shm_before = _iox_shm()
        self.dir_existed = os.path.exists(_IOX_CONFIG_DIR)

    def cleanup(self) -> list[str]:
        removed = []
        for name in _iox_shm() - self.shm_before:
            try:
                os.unlink(os.path.join("/dev/shm", name))
                removed.append(f"/dev/shm/{name}")
            except OSError:
                pass
        if not self.dir_existed and os.path.isdir(_IOX_CONFIG_DIR):
            has_files = any(files for _, _, files in os.walk(_IOX_CONFIG_DIR))
            if not has_files:
                shutil.rmtree(_IOX_CONFIG_DIR, ignore_errors=True)
                removed.append(_IOX_CONFIG_DIR)
        return removed


def _iox_shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("iox2_")}
    except OSError:
        return set()
