"""Timing on a shared machine: while one harness run times latency, the harness's other runs on the same
machine pause between batches.

Two sweeps on one box, or a study's two workers, used to time latency beside each other's training, and such
numbers carried "measured while another worker trained (±10%)". Now a measurement (``measuring()``) closes a
gate that every training and evaluation loader of a run passes before each batch (``gated(loader)``), waits
for the batches already in flight to end, times, and opens the gate again.

Two ``flock`` files in a per-user folder of the machine's temporary directory (the contention is for this
machine's cores; processes on other nodes do not share them): ``gate`` (a measurer holds it exclusively; a
loader takes and drops it shared before each batch, so it waits while a measurement runs) and ``busy`` (a
loader holds it shared while its batch is worked on; the measurer takes it exclusively, so it starts once
the batches in flight have ended). The measurer waits at most ``wait_s`` for them (a process whose loop
body waits for something else, another rank say, must not stall the measurement for ever) and then times
anyway, saying so (``others_paused`` false). A process's own batch does not hold up its own measurement
(its shared ``busy`` lock is converted, not waited for). DataLoader worker processes prefetching in the
background are not paused (the harness's loaders use none by default).

Off with ``HARNESS_PAUSE_OTHERS=0`` in the environment (``measure.pause_others=false`` sets it for a run),
and in distributed runs, whose ranks train in lock-step and wait for rank 0 while it times.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from harness.core import distributed

WAIT_S = 60.0  # at most this long for other runs' batches in flight, then time anyway

_files: dict[tuple[int, str], int] = {}
_depth = 0  # measuring() is re-entrant: the table's calibration inside a latency target's search
_outer: dict = {}  # the outermost measurement's state, which nested ones report
_held = 0  # this process's gated loops now inside an item: only the outermost takes and drops ``busy``


def folder() -> Path:
    default = Path(tempfile.gettempdir()) / f"harness-gate-{os.getuid()}"
    return Path(os.environ.get("HARNESS_GATE_DIR") or default)


def enabled() -> bool:
    return os.environ.get("HARNESS_PAUSE_OTHERS", "1") != "0" and distributed.world_size() == 1


def _fd(name: str) -> int:
    """This process's descriptor of a lock file (a forked child opens its own: flock locks belong to the open
    file, which a fork would share)."""
    key = (os.getpid(), str(folder() / name))
    if key not in _files:
        folder().mkdir(parents=True, exist_ok=True)
        _files[key] = os.open(key[1], os.O_RDWR | os.O_CREAT, 0o600)
    return _files[key]


@contextlib.contextmanager
def measuring(wait_s: float = WAIT_S) -> Iterator[dict]:
    """Hold the machine's other harness runs between batches while the block runs. Yields a dict: ``waited_s``
    (spent waiting for their batches in flight) and ``others_paused`` (False when those did not end within
    ``wait_s``, or when the gate is off)."""
    global _depth
    if _depth or not enabled():
        state = dict(_outer) if _depth else {"waited_s": 0.0, "others_paused": False}
        _depth += 1
        try:
            yield state
        finally:
            _depth -= 1
        return
    started = time.monotonic()
    state = {"waited_s": 0.0, "others_paused": True}
    gate, busy = _fd("gate"), _fd("busy")
    fcntl.flock(gate, fcntl.LOCK_EX)  # no other run starts a batch from here on
    try:
        while True:
            try:
                fcntl.flock(busy, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started > wait_s:
                    state["others_paused"] = False
                    break
                time.sleep(0.01)
        state["waited_s"] = time.monotonic() - started
        _outer.update(state)
        _depth += 1
        try:
            yield state
        finally:
            _depth -= 1
            _outer.clear()
    finally:
        fcntl.flock(busy, fcntl.LOCK_UN)
        fcntl.flock(gate, fcntl.LOCK_UN)


def gated(iterable: Iterable) -> Iterator:
    """``iterable``'s items, each fetched and worked on only while no other run is timing latency: the gate is
    passed before each item (waiting out a measurement), and ``busy`` held until the next item is asked for
    (the loop body's work) or the loop ends."""
    global _held
    if not enabled():
        yield from iterable
        return
    gate, busy = _fd("gate"), _fd("busy")
    items = iter(iterable)
    while True:
        # Inside this process's own measurement there is nothing to wait for. Inside an outer loop's item
        # (an evaluation within a training batch, a search's inner steps) the outer loop holds ``busy``: the
        # item boundary is still a pause point, but only by letting go of ``busy`` while it waits (waiting
        # at the gate while holding it would stall the measurer for its whole wait), and only when a
        # measurer has closed the gate (one lock per process: dropping it otherwise would let the rest of
        # the outer item overlap a measurement that starts meanwhile).
        holding = not _depth and not _held
        if holding:
            fcntl.flock(gate, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
            fcntl.flock(busy, fcntl.LOCK_SH)
            _held += 1
        elif not _depth:
            _pause_inside(gate, busy)
        try:
            try:
                item = next(items)
            except StopIteration:
                return
            yield item
        finally:
            if holding:
                _held -= 1
                if not _depth:
                    fcntl.flock(busy, fcntl.LOCK_UN)


def _pause_inside(gate: int, busy: int) -> None:
    """A pause point inside an item this process holds ``busy`` for: when a measurer has closed the gate,
    let go of ``busy`` (so that its measurement can start), wait at the gate, then hold ``busy`` again."""
    try:
        fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(busy, fcntl.LOCK_UN)
        fcntl.flock(gate, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(busy, fcntl.LOCK_SH)
    else:
        fcntl.flock(gate, fcntl.LOCK_UN)


class GatedLoader:
    """A loader whose iteration is ``gated``; everything else (len, dataset, sampler...) is the loader's."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self) -> Iterator:
        return gated(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":  # not yet set (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)
