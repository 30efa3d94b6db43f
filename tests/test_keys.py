"""The run key and baseline key of every shipped task x method (presets included), pinned: a change to how
configs are composed must keep existing baseline caches, checkpoints and skip_finished matching.
tests/data/run_keys.json was written before the settings moved into the plug-ins (scripts/run_keys.py), and
rewritten once on purpose when the keys took the training numerics' version (NUMERICS 2: every key changed)."""

import json
from pathlib import Path

import pytest

PINNED = json.loads((Path(__file__).parent / "data" / "run_keys.json").read_text())


def _sampled(overrides: list[str]) -> bool:
    """Every task under l1 and gbn, every method on digits, and every extra combination: ~50 of the ~250 pinned
    (a Hydra compose takes ~0.25 s; the whole set, `python scripts/run_keys.py | diff - tests/data/run_keys.json`,
    ~1 min). A task's or a method's config changing its keys changes them in these too."""
    return bool({"method=l1", "method=gbn", "task=digits"} & set(overrides))


def test_every_shipped_config_keeps_its_run_and_baseline_key():
    import runpy

    now = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "run_keys.py"))["keys"](_sampled)
    assert now.keys() == {k for k in PINNED if _sampled(k.split())}
    assert len(now) >= 40
    changed = {k: (PINNED[k], now[k]) for k in now if PINNED[k] != now[k]}
    assert not changed, changed


@pytest.mark.quick
def test_the_pinned_set_covers_every_method_and_task():
    from harness.config import group_options

    pinned = " ".join(PINNED)
    assert all(f"method={m}" in pinned for m in group_options("method"))
    assert all(f"task={t}" in pinned for t in group_options("task"))
