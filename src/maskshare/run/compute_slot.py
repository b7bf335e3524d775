"""A machine-wide share of the cores for compute-heavy stages.

Two maskshare processes that each run torch on every core of a 2-core machine were measured
10x slower per mask step (13 s instead of 1.3 s): threads oversubscribe. So a process takes
one *core slot* per torch thread it runs before a compute stage (grouping, slot statistics,
mask training, evaluation) and gives them back after. Slots are `filelock` files in one
machine-wide folder (`$MASKSHARE_SLOTS_DIR`, default `<tempdir>/maskshare-core-slots`),
one per available core; a process asking for more slots than the machine has takes them all.
A process that finds too few free slots waits and says so in the log; the operating system
drops a dead process's locks, so a killed run never blocks the next one.

Dask workers with one thread each take one slot each, so two of them share two cores; a
second 2-thread run waits for the first's compute stage to end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from maskshare.runtime import available_cores

logger = logging.getLogger(__name__)

POLL_S = 0.2
YIELD_S = 1.0  # > POLL_S: a waiter polls at least once before the releaser goes on


def slots_dir() -> Path:
    d = Path(os.environ.get("MASKSHARE_SLOTS_DIR",
                            Path(tempfile.gettempdir()) / "maskshare-core-slots"))
    d.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by every user of the machine
        os.chmod(d, 0o1777)
    return d


def _try_take(locks: list[FileLock], want: int) -> list[FileLock]:
    held = []
    for lk in locks:
        if len(held) == want:
            break
        try:
            lk.acquire(timeout=0)
            held.append(lk)
        except Timeout:
            continue
    if len(held) < want:  # all or nothing: never sit on a partial share while waiting
        for lk in held:
            lk.release()
        return []
    return held


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def others_waiting(d: Path) -> bool:
    """True if another live process announced that it waits for slots (`wait-<pid>` files;
    those of dead processes are removed)."""
    found = False
    for f in d.glob("wait-*"):
        try:
            pid = int(f.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            found = True
        else:
            with contextlib.suppress(OSError):
                f.unlink()
    return found


def _wait_for(locks: list[FileLock], want: int, d: Path, what: str) -> list[FileLock]:
    logger.info("%s: waiting for %d of %d core slot(s) held by another maskshare process "
                "(%s)", what, want, len(locks), d)
    marker = d / f"wait-{os.getpid()}-{time.monotonic_ns()}"
    marker.touch()
    try:
        while not (held := _try_take(locks, want)):
            time.sleep(POLL_S)
        return held
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()


@contextlib.contextmanager
def compute_slot(threads: int, what: str = "compute",
                 total: int | None = None) -> Iterator[float]:
    """Hold `threads` core slots (at most `total`, default the available cores) for the body;
    yields the seconds spent waiting for them.

    Fairness: a process that waits leaves a `wait-<pid>` marker; one that gives its slots
    back while another waits pauses (YIELD_S) before it may take slots again, so a run of
    many short stages cannot starve another run's next stage."""
    total = available_cores() if total is None else max(1, total)
    want = max(1, min(int(threads), total))
    d = slots_dir()
    locks = [FileLock(str(d / f"core-{i}.lock"), mode=0o666) for i in range(total)]
    t0 = time.monotonic()
    held = _try_take(locks, want) if not others_waiting(d) else []
    if not held:
        held = _wait_for(locks, want, d, what)
    waited = time.monotonic() - t0
    if waited > 1:
        logger.info("%s: got %d core slot(s) after waiting %.1f s", what, want, waited)
    try:
        yield waited
    finally:
        for lk in held:
            lk.release()
        if others_waiting(d):
            time.sleep(YIELD_S)
