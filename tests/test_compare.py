"""The comparison table, on a small synthetic MLflow store."""

import math
import os

import pytest

from harness.compare import aggregate, load_runs
from harness.tracking import MlflowTracker


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def log(method, target, seed, final, base=0.931, status="FINISHED", finetune_epochs=40, reason=None):
        t = MlflowTracker(uri, "harness", tmp_path / "mlruns")
        params = {
            "task.name": "resnet56",
            "method.name": method,
            "prune.flops_reduction": target,
            "seed": seed,
            "train.epochs": 160,
            "finetune.epochs": finetune_epochs,
            "model.name": "resnet56",
            "data.root": f"/data/{seed}",
            "regularizer.name": "none",
            "prune.min_channels_ratio": 0.1,
        }
        t.start(params, {"task": "resnet56", "method": method, "seed": seed, "latency_device": "cpu:x86_64"})
        if status == "FINISHED":
            t.log_metrics(
                {
                    "final_acc": final,
                    "base_acc": base,
                    "flops_reduction": target + 0.004,
                    "params_reduction": target - 0.05,
                    "latency/b1/speedup": 1.5,
                    "latency/b128/speedup": 2.5,
                }
            )
        t.end(status, reason)

    for seed, acc in enumerate([0.930, 0.932, 0.928]):
        log("gbn", 0.7, seed, acc)
    log("gbn", 0.7, 3, None, status="FAILED", reason="NumericalError: loss became nan")
    log("l1", 0.5, 0, 0.925)
    log("l1", 0.5, 1, 0.921, finetune_epochs=10)  # a different fine-tuning budget
    log("l1", 0.5, 2, 0.926)
    return uri


def test_aggregates_seeds_and_separates_failures_and_setups(store):
    runs = load_runs(store, "harness")
    tables, failed, notes = aggregate(runs, tolerance=0.5)
    table = tables["resnet56"]

    gbn = table[table["method"] == "gbn"].iloc[0]
    assert gbn["n"] == 3 and gbn["seeds"] == "0,1,2"  # the failed seed 3 is not averaged in
    assert gbn["final acc %"] == pytest.approx(93.0)
    assert gbn["± std"] == pytest.approx(0.2)  # sample std of 93.0, 93.2, 92.8
    assert gbn["Δ acc"] == pytest.approx(93.0 - 93.1)
    assert gbn["MACs ↓ %"] == pytest.approx(70.4)
    assert gbn["speed-up b128"] == pytest.approx(2.5)

    assert gbn["paper"] == "GBN-30: 93.07 [R]"  # from harness/conf/paper_targets.yaml
    assert gbn["Δ paper"] == pytest.approx(93.0 - 93.07)
    assert gbn["off paper"] == ""

    l1 = table[table["method"] == "l1"]
    assert sorted(l1["n"]) == [1, 2]  # 40-epoch and 10-epoch fine-tunes are not pooled
    assert any("l1@0.5" in n and "not pooled" in n for n in notes)
    assert l1["paper"].eq("").all() and l1["Δ paper"].map(math.isnan).all()

    assert len(failed) == 1 and failed["tags.failure_reason"].iloc[0].startswith("NumericalError")


def test_flags_rows_far_from_the_paper(store):
    tables, _, _ = aggregate(load_runs(store, "harness"), tolerance=0.05)
    assert tables["resnet56"].set_index("method").loc["gbn", "off paper"] == "⚠"


def test_compare_cli_writes_tables_and_plots(store, run_cli, tmp_path):
    out = tmp_path / "report"
    code, stdout, err = run_cli("compare", f"tracking.uri={store}", "--out", str(out))
    assert code == 0, err
    assert "## resnet56" in stdout and "GBN-30: 93.07 [R]" in stdout and "Failed or unfinished runs (1)" in stdout
    for name in ("resnet56_table.md", "resnet56_acc_vs_macs.png", "resnet56_acc_vs_speedup.png"):
        assert (out / name).stat().st_size > 0
    # The report itself is logged to MLflow, and later comparisons leave it out.
    assert len(load_runs(store, "harness")) == 7


def test_compare_leaves_the_process_tracking_uri_alone(store, monkeypatch):
    # mlflow.set_tracking_uri exports $MLFLOW_TRACKING_URI; leaking it sent every later run in the
    # process to the compared store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    load_runs(store, "harness")
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_compare_with_no_matching_runs_says_so(store, run_cli):
    code, _, err = run_cli("compare", f"tracking.uri={store}", "task=vgg16_cifar100")
    assert code == 2 and "no runs" in err


def test_a_param_missing_from_some_runs_reads_as_null_and_pools(tmp_path):
    # Runs logged before a config key existed lack it (NaN in pandas); they pool with runs where it is null.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for seed, extra in ((0, {}), (1, {"method.new_knob": None}), (2, {"method.new_knob": 0.5})):
        t = MlflowTracker(uri, "harness", tmp_path / "mlruns")
        t.start(
            {"task.name": "digits", "method.name": "l1", "prune.flops_reduction": 0.5, "seed": seed, **extra},
            {"task": "digits", "method": "l1", "seed": seed},
        )
        t.log_metrics(
            {"final_acc": 0.9 + seed / 100, "base_acc": 0.95, "flops_reduction": 0.5, "params_reduction": 0.5}
        )
        t.end()
    table = aggregate(load_runs(uri, "harness"), tolerance=0.5)[0]["digits"]
    assert sorted(table["n"].tolist()) == [1, 2]


def test_one_seed_has_no_spread_and_a_running_run_says_so(store, tmp_path):
    from harness.compare import failed_table, render

    t = MlflowTracker(store, "harness", tmp_path / "mlruns")
    t.start(
        {"task.name": "resnet56", "method.name": "gbn", "prune.flops_reduction": 0.5, "seed": 9},
        {"task": "resnet56", "method": "gbn", "seed": 9},
    )  # never ended: still RUNNING
    tables, failed, _ = aggregate(load_runs(store, "harness"))
    table = tables["resnet56"]
    single = table[table["n"] == 1].index[0]
    assert math.isnan(table.loc[single, "± std"])
    row = render(table, "md").splitlines()[2 + single]
    assert "| –" in row and "0.00 |" not in row.split("|")[table.columns.get_loc("± std") + 1]
    reasons = failed_table(failed).set_index("seed")["reason"]
    assert reasons["9"].startswith("still running") and reasons["3"].startswith("NumericalError")


def test_a_study_on_another_model_than_the_tasks_default_is_titled_with_it():
    import pandas as pd

    from harness.compare import with_study

    runs = pd.DataFrame(
        {"tags.task": ["resnet56", "resnet56", "digits"], "params.model.name": ["resnet56", "resnet20", None]}
    )
    assert list(with_study(runs)["study"]) == ["resnet56", "resnet56 (model resnet20)", "digits"]


def test_a_reconstructed_method_is_marked_in_the_table_and_in_list(tmp_path, run_cli):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for method, rebuilt in (("aip", "true"), ("l1", "false")):
        t = MlflowTracker(uri, "harness", tmp_path / "mlruns")
        t.start(
            {"task.name": "resnet56", "method.name": method, "prune.flops_reduction": 0.5, "seed": 0},
            {"task": "resnet56", "method": method, "seed": 0, "reconstruction": rebuilt},
        )
        t.log_metrics({"final_acc": 0.9, "base_acc": 0.93, "flops_reduction": 0.5, "params_reduction": 0.4})
        t.end("FINISHED", None)
    table = aggregate(load_runs(uri, "harness"))[0]["resnet56"]
    assert sorted(table["method"]) == ["aip (reconstruction)", "l1"]
    code, out, _ = run_cli("list")
    assert code == 0
    listed = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "[reconstruction]" in listed["aip"] and "[reconstruction]" not in listed["l1"]


def test_knapsack_and_normalised_runs_are_rows_of_their_own(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for seed, (allocation, normalize) in enumerate([("global", None), ("global", None), ("knapsack", "latency")]):
        t = MlflowTracker(uri, "harness", tmp_path / "mlruns")
        params = {"method.name": "l1", "prune.flops_reduction": 0.5, "prune.normalize": normalize, "seed": seed}
        tags = {"task": "digits", "method": "l1", "seed": seed, "allocation": allocation}
        t.start(params, {**tags, "normalize": normalize or "none"})
        t.log_metrics({"final_acc": 0.9, "base_acc": 0.95, "flops_reduction": 0.5, "params_reduction": 0.4})
        t.end()
    table = aggregate(load_runs(uri, "harness"))[0]["digits"]
    assert sorted(table["method"]) == ["l1", "l1 [knapsack, ÷latency]"]
    assert table.set_index("method").loc["l1", "n"] == 2


def test_retimed_speed_ups_are_columns_of_their_own(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    runs = load_runs(store, "harness")
    l1 = runs[(runs["tags.method"] == "l1") & (runs["status"] == "FINISHED")]
    for run_id, seed in zip(l1["run_id"], l1["tags.seed"]):  # as `python -m harness retime` logs them
        client.log_metric(run_id, "retime/b128/speedup", {"0": 1.9, "1": 2.1, "2": 2.0}[seed])
    table = aggregate(load_runs(store, "harness"))[0]["resnet56"].set_index("method")
    retimed = table["speed-up b128 retimed"]
    assert set(retimed.dropna().round(3)) == {1.95, 2.1}  # l1's two setups: fine-tune 40 (seeds 0, 2), 10 (seed 1)
    assert math.isnan(retimed.loc["gbn"]) and table.loc["gbn", "speed-up b128"] == 2.5
