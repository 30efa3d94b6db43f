"""The cross-process lock without flock: mutual exclusion, and recovery from a holder that died."""

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import pytest

from harness.core.locks import LockTimeout, file_lock


def _count_under_lock(lock, counter, n):
    import fcntl

    fcntl.flock = lambda *a, **k: None  # a file system where flock does nothing: the lock must not need it
    for _ in range(n):
        with file_lock(lock, poll=0.001):
            value = int(counter.read_text())
            time.sleep(0.001)  # widen the race window
            counter.write_text(str(value + 1))


def test_two_processes_never_hold_it_at_once(tmp_path):
    lock, counter = tmp_path / "x.lock", tmp_path / "counter"
    counter.write_text("0")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_count_under_lock, args=(lock, counter, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert int(counter.read_text()) == 80 and not lock.exists()


def test_a_lock_left_by_a_dead_process_on_this_host_is_broken_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "x.lock"
    lock.write_text(f"{socket.gethostname()} {dead.pid} feedface")
    t0 = time.monotonic()
    with file_lock(lock, timeout=5):
        assert lock.read_text() != f"{socket.gethostname()} {dead.pid} feedface"
    assert time.monotonic() - t0 < 2 and not lock.exists()


def test_another_hosts_lock_is_broken_only_once_it_stops_beating(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("node7 12345 cafe")
    with pytest.raises(LockTimeout, match="node7"):  # fresh: its owner may be alive on node7
        with file_lock(lock, timeout=0.5, stale_after=30):
            pass
    old = time.time() - 120
    os.utime(lock, (old, old))  # no heartbeat for two minutes: its owner is gone
    with file_lock(lock, timeout=5, stale_after=30):
        assert "node7" not in lock.read_text()


def test_the_holder_keeps_its_lock_fresh(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(lock, heartbeat=0.05):
        old = time.time() - 120
        os.utime(lock, (old, old))
        time.sleep(0.3)
        assert time.time() - lock.stat().st_mtime < 5
