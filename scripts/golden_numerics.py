#!/usr/bin/env python
"""The golden training numerics: bit-exact digests of what two seeded runs train, at 1 thread, seed 0.

    python scripts/golden_numerics.py > tests/data/golden_numerics.json

tests/test_numerics.py runs the same cases and compares: any change to what a seeded run draws or computes
fails it, so that such a change is made on purpose, with ``harness.core.train.NUMERICS`` raised (which changes
every baseline and run key, so no cache of the old numerics is reused). Digests hold on one kind of machine:
the file records torch's version and CPU capability, and the test skips elsewhere, saying so.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

# Seconds-long timing: what is pinned is what training produces, not the latency.
_QUIET = [
    "threads=1",
    "seed=0",
    "tracking=none",
    "quiet=true",
    "measure.batch_sizes=[1]",
    "measure.repeats=2",
    "measure.warmup=1",
    "measure.max_seconds=0",
]


def cases(data_root: Path) -> dict[str, list[str]]:
    return {
        # The README's main job with the task's own recipe: a 30-epoch baseline, L1 to 50%, a 15-epoch fine-tune.
        "digits_l1": ["task=digits", "method=l1", "prune.flops_reduction=0.5"],
        # A CIFAR ResNet-20 baseline with its augmentation and two loader workers, on generated images.
        "resnet20_generated": [
            "task=resnet56",
            "model=resnet20",
            f"data.root={data_root}",
            "data.check_integrity=false",
            "method=none",
            "train.epochs=2",
            "train.batch_size=16",
        ],
    }


def machine() -> dict[str, str]:
    """What the digests depend on besides the code: torch's kernels and the CPU's vector width."""
    import torch

    return {
        "torch": ".".join(torch.__version__.split(".")[:2]),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def measure(name: str, overrides: list[str], workdir: Path) -> dict:
    """Run one case in-process under ``workdir``: the baseline's and the final model's digests, and the metrics."""
    import torch

    from harness.artifacts import read_payload, state_digest
    from harness.config import compose
    from harness.run import run

    results = workdir / name
    threads = torch.get_num_threads()
    try:
        summary = run(compose([*overrides, *_QUIET, f"results_dir={results}"]))
    finally:
        torch.set_num_threads(threads)
    (baseline,) = results.glob("baselines/*/*/model.pt")
    return {
        "baseline": state_digest(torch.load(baseline, map_location="cpu", weights_only=True)),
        "final": state_digest(read_payload(summary["model_artifact"])["state_dict"]),
        "base_metric": summary["base_acc"],
        "final_metric": summary["final_acc"],
        "final_macs": summary["final_macs"],
        "channels": summary["channels"],
    }


def golden(workdir: Path) -> dict:
    from tests.fixtures import make_cifar10

    make_cifar10(workdir / "cifar", per_batch=32, n_test=32)
    return {
        "machine": machine(),
        "cases": {name: measure(name, o, workdir) for name, o in cases(workdir / "cifar").items()},
    }


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures
    with tempfile.TemporaryDirectory() as tmp:
        json.dump(golden(Path(tmp)), sys.stdout, indent=1, sort_keys=True)
        print()
