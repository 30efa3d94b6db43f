"""The run key and baseline key of every shipped task x method (presets included), pinned: a change to how
configs are composed must keep existing baseline caches, checkpoints and skip_finished matching.
tests/data/run_keys.json was written before the settings moved into the plug-ins (scripts/run_keys.py)."""

import json
from pathlib import Path

import pytest

PINNED = json.loads((Path(__file__).parent / "data" / "run_keys.json").read_text())


def test_every_shipped_config_keeps_its_run_and_baseline_key():
    import runpy

    now = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "run_keys.py"))["keys"]()
    assert now.keys() == PINNED.keys()
    changed = {k: (PINNED[k], now[k]) for k in PINNED if PINNED[k] != now[k]}
    assert not changed, changed


@pytest.mark.quick
def test_the_pinned_set_covers_every_method_and_task():
    from harness.config import group_options

    pinned = " ".join(PINNED)
    assert all(f"method={m}" in pinned for m in group_options("method"))
    assert all(f"task={t}" in pinned for t in group_options("task"))
