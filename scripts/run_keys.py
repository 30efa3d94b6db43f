#!/usr/bin/env python
"""Prints the run key and baseline key of every shipped task x method (presets included) x budget: pinned so that a
refactor keeps caches, checkpoints and skip_finished matching."""

import json
import sys

from harness.baseline import baseline_key
from harness.checkpoint import run_key
from harness.config import compose, group_options

out = {}
for task in group_options("task"):
    for method in group_options("method"):
        for extra in ([], ["budget=cifar10_dev"]) if task == "resnet56" else ([],):
            ov = [f"task={task}", f"method={method}", *extra]
            cfg = compose(ov)
            out[" ".join(ov)] = {"run": run_key(cfg), "baseline": baseline_key(cfg)}
for extra in (
    ["regularizer=anl"],
    ["prune.target=latency", "prune.latency_reduction=0.3"],
    ["model=resnet20", "task=resnet56", "budget=cifar10_dev"],
):
    ov = ["method=l1", *extra]
    cfg = compose(ov)
    out[" ".join(ov)] = {"run": run_key(cfg), "baseline": baseline_key(cfg)}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
