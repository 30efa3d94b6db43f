"""harness.core.gate: while one process times latency, the others' loaders wait between batches."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from harness.core import gate

pytestmark = pytest.mark.timing  # its timings want the machine to itself (tests/conftest.py)

TRAINER = textwrap.dedent(
    """
    import json, sys, time
    from harness.core.gate import gated
    seconds, items, out, inner = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    spans = []

    def work():
        start = time.monotonic()
        time.sleep(seconds)
        spans.append((start, time.monotonic()))

    for i in gated(range(items)):
        work()  # the batch's work; with inner > 0, then a loop over another gated loader (an evaluation
        for j in gated(range(inner)):  # inside training) and more work
            work()
        if inner:
            work()
        with open(out, "w") as f:
            json.dump(spans, f)
    """
)


def start_trainer(tmp_path, seconds: float, items: int, inner: int = 0):
    out = tmp_path / "spans.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(seconds), str(items), str(out), str(inner)], env=os.environ
    )
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text()):  # it has trained a batch
        assert time.monotonic() < deadline and proc.poll() is None, "the trainer did not start"
        time.sleep(0.02)
    return proc, out


@pytest.mark.quick
def test_no_batch_of_another_process_runs_while_one_measures(tmp_path):
    proc, out = start_trainer(tmp_path, 0.05, 60)
    with gate.measuring() as state:
        entered = time.monotonic()
        time.sleep(0.6)
        left = time.monotonic()
    assert proc.wait(timeout=60) == 0
    spans = json.loads(out.read_text())
    assert state["others_paused"] and state["waited_s"] < 1.0
    assert any(end <= entered for _, end in spans) and any(start >= left for start, _ in spans)  # ran around it
    overlapping = [(s, e) for s, e in spans if s < left and e > entered]
    assert not overlapping, f"batches ran while measuring: {overlapping} within [{entered}, {left}]"


@pytest.mark.quick
def test_a_loop_inside_another_processs_batch_neither_stalls_nor_overlaps_a_measurement(tmp_path):
    """The inner loop of a nested pair (an evaluation inside a training batch, a search's steps) is where a
    long outer item pauses: the measurer starts within an inner step, not after the whole outer item; the
    inner loop neither waits at the gate while its outer item holds the machine busy (the measurer would
    wait out its whole wait_s) nor lets go of the outer item's hold when it ends (the rest of the outer item
    would overlap the measurement)."""
    proc, out = start_trainer(tmp_path, 0.02, 8, inner=40)  # an outer item lasts 0.8 s and more
    time.sleep(0.3)  # well inside an outer item: only its inner loop's boundaries can pause it
    with gate.measuring(wait_s=0.5) as state:
        entered = time.monotonic()
        time.sleep(0.6)
        left = time.monotonic()
    assert proc.wait(timeout=60) == 0
    spans = json.loads(out.read_text())
    assert state["others_paused"] and state["waited_s"] < 0.3, state
    assert any(start >= left for start, _ in spans)
    overlapping = [(s, e) for s, e in spans if s < left and e > entered]
    assert not overlapping, f"batches ran while measuring: {overlapping} within [{entered}, {left}]"


@pytest.mark.quick
def test_a_batch_that_outlasts_the_wait_is_reported_not_waited_for(tmp_path):
    proc, _ = start_trainer(tmp_path, 3.0, 2)
    try:
        t0 = time.monotonic()
        with gate.measuring(wait_s=0.3) as state:
            waited = time.monotonic() - t0
        assert not state["others_paused"] and 0.3 <= waited < 2.5
    finally:
        proc.kill()


@pytest.mark.quick
def test_a_process_does_not_wait_for_itself():
    seen = []
    for i in gate.gated(range(3)):  # a measurement inside this process's own batch
        with gate.measuring(wait_s=5) as outer:
            assert outer["waited_s"] < 1.0
            seen += list(gate.gated(range(2)))  # and a loader inside its own measurement
            with gate.measuring() as inner:
                assert inner["others_paused"] == outer["others_paused"]
    assert seen == [0, 1] * 3


@pytest.mark.quick
def test_the_gate_is_off_when_asked(monkeypatch):
    monkeypatch.setenv("HARNESS_PAUSE_OTHERS", "0")
    assert list(gate.gated(range(3))) == [0, 1, 2]
    with gate.measuring() as state:
        assert state == {"waited_s": 0.0, "others_paused": False}


@pytest.mark.quick
def test_a_non_boolean_pause_others_exits_2_in_one_line(run_cli, tiny_digits):
    code, _, err = run_cli("run", *tiny_digits, "method=l1", "measure.pause_others=maybe")
    assert code == 2 and "measure.pause_others must be true or false" in err and len(err.strip().splitlines()) == 1
