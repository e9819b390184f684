"""The one test hook: a process stops at a point a test chooses until the test releases it, or a deadline passes.

Inert unless the FACE2HBE_TEST_HOLD environment variable names a folder; a test sets it for the processes it starts
(the CLI in a subprocess, a local Ray's workers, which inherit the environment Ray started with). In that folder
the test writes a count into a file named after the point it wants:

    record    recommend, after it has written that many records
    prepare   a batch job's detection process, after that many images
    score     a batch job's scoring actor, after that many images

The first process to get there creates <folder>/<point>.pid (exclusively: one holder per point), writes its pid
in it and waits until <folder>/<point>.release exists, at most DEADLINE_S seconds; then it logs and goes on. So a
test kills the server or that very process at a point it controls instead of racing the machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "FACE2HBE_TEST_HOLD"
POINTS = ("record", "prepare", "score")
DEADLINE_S = 300.0  # a hang guard: a test releases or kills long before
_passed: Counter = Counter()  # per process
_lock = threading.Lock()


def _reached(point: str, n: int) -> Path | None:
    """The release file to wait for when this call is the hold, else None (the usual case: no folder, or not yet)."""
    folder = os.environ.get(ENV)
    if not folder:
        return None
    if point not in POINTS:
        raise ValueError(f"unknown hold point {point!r} (one of {', '.join(POINTS)})")
    spec = Path(folder) / point
    with _lock:
        _passed[point] += n
        try:
            count = int(spec.read_text())
        except (OSError, ValueError):
            return None
        if _passed[point] < count:
            return None
    try:
        fd = os.open(f"{spec}.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None  # another process (or this one, earlier) holds or held this point
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    log.info("test hold at %s: waiting for %s", point, f"{spec}.release")
    return Path(f"{spec}.release")


def _timed_out(release: Path, point: str) -> None:
    if not release.exists():
        log.warning("test hold at %s: not released within %g s, going on", point, DEADLINE_S)


def hold(point: str, n: int = 1) -> None:
    """Count `n` passes of `point` in this process; hold here when a test asked for it (see the module's doc)."""
    release = _reached(point, n)
    if release is None:
        return
    deadline = time.monotonic() + DEADLINE_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _timed_out(release, point)


async def ahold(point: str, n: int = 1) -> None:
    """`hold` for a coroutine: the event loop keeps running the other tasks while this one waits."""
    release = _reached(point, n)
    if release is None:
        return
    deadline = time.monotonic() + DEADLINE_S
    while not release.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    _timed_out(release, point)
