"""Property-based fuzzing of the command line: whatever the overrides, every command ends with exit 0, 2,
3, 4 or 7 and, unless 0, with exactly one line on stderr; never a traceback.

The broad test (300 examples) covers run (--cfg, and the real run loop replaced by a stub so that a
valid config costs nothing), sweep (stubbed the same way), compare, export and list. The narrow test runs the
real loop on digits with a tiny budget and extreme values of the numeric keys. ``FUZZ_EXAMPLES=N``
raises both counts (scripts/fuzz_cli.sh runs the nightly-size version).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.cli import main

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
VALID_KEYS = [
    "seed",
    "threads",
    "device",
    "quiet",
    "resume",
    "skip_finished",
    "results_dir",
    "task",
    "method",
    "budget",
    "regularizer",
    "tracking",
    "launcher",
    "model",
    "model.name",
    "prune.flops_reduction",
    "prune.min_channels_ratio",
    "prune.round_to",
    "prune.target",
    "prune.latency_reduction",
    "measure.target_batch",
    "train.epochs",
    "train.lr",
    "train.batch_size",
    "train.schedule",
    "train.milestones",
    "train.warmup_epochs",
    "train.tail_epochs",
    "finetune.epochs",
    "finetune.momentum",
    "measure.batch_sizes",
    "measure.repeats",
    "measure.eval_every",
    "data.limit_train",
    "data.root",
    "tracking.experiment",
    "method.sparsity",
    "method.tick_p",
    "regularizer.eps",
    "launcher.timeout_min",
]
ODD = [
    "",
    ".",
    "..",
    "seed.",
    ".seed",
    "prune..x",
    "../x",
    "a/b",
    "+seed",
    "~seed",
    "+new.key",
    "bogus.key",
    "prune.flops_reductoin",
    "trian.epochs",
    "séed",
    "🙂",
    "task.name",
    "data",
    "method.name",
]
ODD_VALUES = [
    "[1,2]",
    "[]",
    "[1,",
    "null",
    "true",
    "1,2",
    "a,b",
    ",",
    "../../etc/passwd",
    "~/x",
    "${oc.env:HOME}",
    "${nope}",
    "'quoted'",
    '"x y"',
    "é",
    "1e309",
    "-0",
    "0x10",
    "nan",
    "-inf",
    "{a: 1}",
    "cuda:x",
    "digits",
    "gbn",
    "l1,random",
    "slurm",
    "local",
    "latency",
    "macs",
]
SUBCOMMANDS = ["run --cfg", "run", "sweep", "compare", "export", "list"]


def _misspell(key: str) -> st.SearchStrategy[str]:
    return st.integers(0, max(0, len(key) - 1)).map(lambda i: key[:i] + key[i + 1 :] + key[i : i + 1])


keys = st.one_of(
    st.sampled_from(VALID_KEYS),
    st.sampled_from(VALID_KEYS).flatmap(_misspell),
    st.sampled_from(ODD),
    st.text(max_size=8),
)
values = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.floats().map(repr), st.sampled_from(ODD_VALUES), st.text(max_size=10)
)
overrides = st.lists(st.one_of(st.tuples(keys, values).map("=".join), st.text(max_size=8)), max_size=5)


@pytest.fixture
def stubbed_run(monkeypatch):
    """The run loop replaced by a stub: a valid config returns at once instead of training."""
    import harness.run

    monkeypatch.setattr(
        harness.run,
        "run",
        lambda cfg: {"skipped": True, "mlflow_run_id": "stub", "final_acc": 1.0, "flops_reduction": 0.5},
    )


def _check(code: int, err: str) -> None:
    assert "Traceback" not in err
    assert code in (0, 2, 3, 4, 7), err
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(SUBCOMMANDS), items=overrides)
@example(command="run --cfg", items=["method.name=0"])  # a number as a plug-in's name: was an internal error
def test_any_overrides_end_cleanly(stubbed_run, capsys, command, items):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    args = command.split()
    if args[0] in ("run", "sweep"):
        # Base settings last: a key given twice takes its last value, so nothing is submitted or written.
        args += [*items, "launcher=inline", "tracking=none", f"results_dir={tmp}"]
    elif args[0] == "compare":
        args += [*items, f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "--no-log"]
    elif args[0] == "export":  # the source is drawn like an override (odd paths, text, numbers)
        args += [*items, f"results_dir={tmp}"]
    else:
        args += items
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own exits (--help, usage errors)
        code = e.code
    _check(code, capsys.readouterr().err)


numeric = st.sampled_from(
    [
        "seed",
        "prune.flops_reduction",
        "prune.min_channels_ratio",
        "prune.round_to",
        "finetune.lr",
        "finetune.momentum",
        "measure.batch_sizes",
        "threads",
        "data.limit_train",
    ]
)
extreme = st.one_of(
    st.sampled_from(
        ["0", "1", "-1", "0.5", "0.999", "1e-12", "2", "4294967296", "nan", "inf", "[1]", "[0]", "null", "8", "64"]
    ),
    st.floats(-2, 2).map(repr),
)


@settings(max_examples=max(12, EXAMPLES // 25), deadline=None, suppress_health_check=list(HealthCheck))
@given(items=st.dictionaries(numeric, extreme, max_size=3))
def test_real_runs_with_extreme_numbers_end_cleanly(run_cli, tmp_path, items):
    # A tiny digits budget; the baseline is cached in tmp_path after the first example.
    base = [
        "task=digits",
        "method=l1",
        "train.epochs=1",
        "finetune.epochs=1",
        "measure.repeats=1",
        "measure.max_seconds=0",
        "measure.warmup=0",
        "tracking=none",
        "quiet=true",
        f"results_dir={tmp_path}",
    ]
    if "measure.batch_sizes" not in items:
        base.append("measure.batch_sizes=[1]")
    code, _, err = run_cli("run", *base, *(f"{k}={v}" for k, v in items.items()))
    _check(code, err)
