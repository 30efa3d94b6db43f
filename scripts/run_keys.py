#!/usr/bin/env python
"""Prints the run key and baseline key of every shipped task x method (presets included) x budget, as JSON:
tests/data/run_keys.json pins them so that a refactor keeps caches, checkpoints and skip_finished matching."""

import json
import sys


def keys(select=lambda overrides: True) -> dict[str, dict[str, str]]:
    """The keys of every combination whose overrides ``select`` accepts (all of them by default)."""
    from harness.baseline import baseline_key
    from harness.checkpoint import run_key
    from harness.config import compose, group_options

    out = {}
    combos = [
        [f"task={t}", f"method={m}", *extra]
        for t in group_options("task")
        for m in group_options("method")
        for extra in (([], ["budget=cifar10_dev"]) if t == "resnet56" else ([],))
    ]
    combos += [
        ["method=l1", *extra]
        for extra in (
            ["regularizer=anl"],
            ["prune.target=latency", "prune.latency_reduction=0.3"],
            ["model=resnet20", "task=resnet56", "budget=cifar10_dev"],
        )
    ]
    for overrides in filter(select, combos):
        cfg = compose(overrides)
        out[" ".join(overrides)] = {"run": run_key(cfg), "baseline": baseline_key(cfg)}
    return out


if __name__ == "__main__":
    json.dump(keys(), sys.stdout, indent=1, sort_keys=True)
