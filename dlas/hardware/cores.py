"""Keep timing honest when several stack points run at once on one machine.

A parallel sweep (``hydra/launcher=joblib``) trains and compiles several points at the
same time, which is fine, but a latency measured while another job trains is a
measurement of the contention. So every dlas process on a host holds one lock file:

* *shared* while it computes (training, compression, compilation): any number at once;
* *exclusive* while it measures (``measure_in_subprocess`` and MetaSchedule's candidate
  runs): it waits until no other dlas job computes or measures, and others wait for it.

This is a readers-writer lock on ``fcntl.flock``: held per open file, released by the
kernel when a process dies (``kill -9`` never leaves the host locked), converted in place
between shared and exclusive. The lock file is host-local (the temp dir) because cores
are: on a cluster, each node serializes its own measurements.

Outside ``computing()`` (benchmarks, tests, single runs) ``exclusive()`` does nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("dlas.hardware")

_held: int | None = None  # this process's lock file descriptor while computing()


def default_lock_path() -> Path:
    return Path(tempfile.gettempdir()) / f"dlas-cores-{os.getuid()}.lock"


@contextmanager
def computing(path: Path | None = None) -> Iterator[None]:
    """Hold the host's lock shared for the duration (re-entrant: nested calls share it)."""
    global _held
    if _held is not None:
        yield
        return
    path = path or default_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, fcntl.LOCK_SH, "to compute")
        _held = fd
        yield
    finally:
        _held = None
        os.close(fd)  # releases the lock


@contextmanager
def exclusive() -> Iterator[None]:
    """Measure alone: upgrade this process's lock to exclusive, then back to shared."""
    if _held is None:
        yield
        return
    _acquire(_held, fcntl.LOCK_EX, "to measure alone")
    try:
        yield
    finally:
        fcntl.flock(_held, fcntl.LOCK_SH)


def _acquire(fd: int, mode: int, why: str) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    log.info("waiting for other dlas jobs on this host %s", why)
    start = time.perf_counter()
    fcntl.flock(fd, mode)
    log.info("waited %.1f s %s", time.perf_counter() - start, why)
