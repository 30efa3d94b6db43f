"""harness/latency/allocator.py: one glibc malloc regime for a whole run (measure.steady_allocator)."""

import platform

import pytest

from harness.latency import allocator


@pytest.mark.quick
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_hold_steady_fixes_the_thresholds_once():
    assert allocator.hold_steady() is True
    assert allocator.hold_steady() is True  # idempotent


@pytest.mark.parametrize("flag, calls", [("true", 1), ("false", 0)])
def test_a_run_holds_the_allocator_steady_unless_told_not_to(run_cli, tiny_digits, monkeypatch, flag, calls):
    seen = []
    monkeypatch.setattr(allocator, "hold_steady", lambda: seen.append(1) or True)
    code, _, err = run_cli(
        "run", *tiny_digits, "method=random", "measure.batch_sizes=[1]", f"measure.steady_allocator={flag}"
    )
    assert code == 0, err
    assert len(seen) == calls


@pytest.mark.quick
def test_a_non_boolean_steady_allocator_exits_2_in_one_line(run_cli, tiny_digits):
    code, _, err = run_cli("run", *tiny_digits, "method=l1", "measure.steady_allocator=maybe")
    assert code == 2 and "measure.steady_allocator must be true or false" in err and len(err.strip().splitlines()) == 1
