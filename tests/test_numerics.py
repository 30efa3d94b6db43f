"""Training numerics pinned: what two seeded runs train, bit for bit (scripts/golden_numerics.py wrote the digests).

A failure here means a change altered what a seeded run draws or computes. If that is intended, raise
``harness.core.train.NUMERICS`` (every baseline and run key changes with it, so no cache trains other weights
under its old key), regenerate tests/data/run_keys.json and tests/data/golden_numerics.json, and say why in
the commit."""

import json
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "data" / "golden_numerics.json").read_text())
SCRIPT = runpy.run_path(str(ROOT / "scripts" / "golden_numerics.py"))

pytestmark = pytest.mark.skipif(
    SCRIPT["machine"]() != GOLDEN["machine"],
    reason=f"the golden digests were made with {GOLDEN['machine']}, this machine has {SCRIPT['machine']()}: "
    "regenerate them here with `python scripts/golden_numerics.py > tests/data/golden_numerics.json` to compare",
)


def test_seeded_runs_train_the_golden_weights(tmp_path, one_thread):
    now = SCRIPT["golden"](tmp_path)
    assert now["cases"] == GOLDEN["cases"]


def test_the_old_numerics_were_one_extra_draw_per_epoch(tmp_path, one_thread, monkeypatch):
    """NUMERICS 1 (before a482e41) drew once more from the loader's generator each epoch (tqdm.asyncio's
    throwaway iterator): putting that draw back trains 89eac71's digits baseline bit for bit, and the golden
    check above would have failed on it."""
    import harness.core.train as train_module

    seed_epoch = train_module._seed_epoch

    def with_the_throwaway_draw(loader, seed):
        seed_epoch(loader, seed)
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)

    monkeypatch.setattr(train_module, "_seed_epoch", with_the_throwaway_draw)
    overrides = [o for o in SCRIPT["cases"](tmp_path)["digits_l1"] if not o.startswith("method=")]
    digest = SCRIPT["measure"]("digits_baseline", [*overrides, "method=none"], tmp_path)["baseline"]
    assert digest == GOLDEN["numerics_1"]["digits_baseline"]
    assert digest != GOLDEN["cases"]["digits_l1"]["baseline"]
