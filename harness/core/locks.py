"""An exclusive lock between processes, on one machine or across the nodes of a cluster.

``flock`` is not reliable on NFS, where SLURM users keep ``results/``. So the lock is a file created
atomically (``O_CREAT | O_EXCL``, atomic on NFS v3 and later) that names its owner (host, pid, a random
token). While held, a thread refreshes its mtime every ``heartbeat`` seconds. A waiter breaks a lock
whose owner is gone: on the same host when the pid no longer exists, from any host when the file has
not been refreshed for ``stale_after`` seconds (a SIGKILLed or preempted holder).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


class LockTimeout(TimeoutError):
    def __init__(self, message: str, owner: str | None = None):
        super().__init__(message)
        self.owner = owner  # "host pid token" of the holder when the wait ended


@contextlib.contextmanager
def file_lock(
    path: Path, *, poll: float = 0.25, heartbeat: float = 10.0, stale_after: float = 60.0, timeout: float | None = None
) -> Iterator[None]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
    deadline = None if timeout is None else time.monotonic() + timeout
    while not _try_create(path, token):
        _break_if_stale(path, stale_after)
        if deadline is not None and time.monotonic() > deadline:
            owner = _read(path)
            raise LockTimeout(f"could not take the lock {path} within {timeout} s (held by {owner!r})", owner)
        time.sleep(poll)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, token, heartbeat, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if _read(path) == token:
            path.unlink(missing_ok=True)


def _try_create(path: Path, token: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _heartbeat(path: Path, token: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        if _read(path) == token:
            with contextlib.suppress(OSError):
                os.utime(path)


def _break_if_stale(path: Path, stale_after: float) -> None:
    owner = _read(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return  # released meanwhile
    if owner is None or not (_owner_is_dead(owner) or age > stale_after):
        return
    # Move it aside under a unique name (atomic), then check that what moved is the stale lock: if its
    # holder released it and another waiter took it meanwhile, put that fresh lock back.
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except OSError:
        return
    if _read(aside) == owner:
        aside.unlink(missing_ok=True)
    else:
        with contextlib.suppress(OSError):
            os.rename(aside, path)


def _owner_is_dead(owner: str) -> bool:
    """True when the owner ran on this host and its process is gone."""
    host, _, rest = owner.partition(" ")
    pid = rest.split(" ")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
