"""The cifar10-dev study's statistics: spreads, paired intervals, labels."""

import importlib.util
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("study", Path(__file__).parents[1] / "scripts" / "cifar10_dev_study.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_a_spread_over_one_seed_reads_as_a_dash():
    assert study.cell([65.0]) == "65.00 ± –"
    assert study.cell([1.0, 2.0, 3.0]) == "2.00 ± 1.00"


def test_paired_t_interval():
    mean, lo, hi = study.t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2 dof) x sd 1 / sqrt(n)
    assert mean == 2.0 and lo == pytest.approx(2 - half, abs=1e-5) and hi == pytest.approx(2 + half, abs=1e-5)
    assert math.isnan(study.t_interval([0.5])[1])


def test_equal_budget_controls_are_labelled_apart():
    row = {"tags.method": "l1", "params.finetune.epochs": str(study.FINETUNE_EPOCHS)}
    assert study.label(row) == "l1"
    assert study.label({**row, "params.finetune.epochs": "17"}) == "l1+ft"
    assert study.label({"tags.method": "gbn_cpu", "params.finetune.epochs": "8"}) == "gbn_cpu"


def test_a_difference_names_the_side_its_interval_excludes_zero_for():
    assert study.difference("gbn", "l1", [2.0, 2.5, 3.0])["verdict"] == "gbn ahead"
    assert study.difference("gbn", "l1", [-2.0, -2.5, -3.0])["verdict"] == "l1 ahead"
    assert study.difference("gbn", "l1", [-2.0, 2.5, 0.1])["verdict"] == "no difference shown"
    one = study.difference("gbn", "l1", [1.0])
    assert one["verdict"] == "one seed: no interval" and one["95% t interval"] == "–"


@pytest.mark.quick
def test_finished_runs_outlive_the_store_that_held_them(tmp_path, monkeypatch):
    import pandas as pd

    import harness.compare

    def frame(run_id: str, status: str, acc: float) -> dict:
        return {
            "run_id": run_id,
            "status": status,
            "start_time": pd.Timestamp("2026-12-02 10:00", tz="UTC"),
            "end_time": pd.Timestamp("2026-12-02 11:00", tz="UTC"),
            "params.prune.flops_reduction": "0.5",
            "metrics.final_acc": acc,
            "tags.method": "l1",
            "tags.run_key": f"key-{run_id}",
            "artifact_uri": "file:///nowhere",  # not kept
        }

    store = pd.DataFrame([frame("a", "FINISHED", 0.61), frame("b", "RUNNING", 0.0)])
    monkeypatch.setattr(harness.compare, "load_runs", lambda uri, experiment, superseded=False: store)
    monkeypatch.setattr(study, "KEPT_RUNS", tmp_path)
    first = study.load_runs("exp")
    assert list(first["run_id"]) == ["a"]  # only finished runs

    store = pd.DataFrame([frame("a", "FINISHED", 0.62), frame("c", "FINISHED", 0.70)])  # a re-read replaces
    assert sorted(study.load_runs("exp")["run_id"]) == ["a", "c"]

    store = pd.DataFrame([frame("d", "FINISHED", 0.5)])  # a worker's read keeps nothing: a report does
    assert sorted(study.load_runs("exp", keep=False)["run_id"]) == ["a", "c", "d"]

    store = pd.DataFrame()  # a new checkout: the store is empty, the committed file is not
    kept = study.load_runs("exp").set_index("run_id")
    assert sorted(kept.index) == ["a", "c"]
    assert kept.loc["a", "metrics.final_acc"] == 0.62
    assert kept.loc["a", "params.prune.flops_reduction"] == "0.5"  # params stay strings, as MLflow gives them
    assert "artifact_uri" not in kept.columns
    assert str(kept["end_time"].dtype).startswith("datetime64")

    found_wrong = {**frame("a", "FINISHED", 0.62), "tags.harness.superseded": "a defect fixed since"}
    store = pd.DataFrame([found_wrong, frame("c", "FINISHED", 0.70)])  # python -m harness supersede a
    assert list(study.load_runs("exp")["run_id"]) == ["c"]
    store = pd.DataFrame()  # and it left the committed record too
    assert list(study.load_runs("exp")["run_id"]) == ["c"]
    assert study.kept_run_keys("exp") == {"key-c"}  # so a study's own skip runs its config again


@pytest.mark.quick
def test_the_gfp_metapruning_study_labels_each_control_by_the_budget_it_matches(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "gfp_metapruning_study", Path(__file__).parents[1] / "scripts" / "gfp_metapruning_study.py"
    )
    gm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gm)
    epochs = {("gfp_cpu", 0): 12.6, ("metapruning_cpu", 0): 41.3}
    monkeypatch.setattr(gm, "seed_metric", lambda exp, method, seed, metric, runs=None: epochs.get((method, seed)))
    row = {"tags.method": "l1", "tags.seed": "0", "params.finetune.epochs": "8"}
    assert gm.label(row) == "l1"
    assert gm.label({**row, "params.finetune.epochs": "13"}) == "l1+ft"
    assert gm.label({**row, "params.finetune.epochs": "41"}) == "l1+ft·mp"
    assert gm.label({**row, "tags.method": "random", "params.finetune.epochs": "13"}) == "random+ft"
    search = {"tags.method": "metapruning_cpu", "tags.seed": "0", "params.method.population": "8"}
    assert gm.label(search) == "metapruning (24 cand.)"
    assert gm.label({**search, "params.method.population": "16"}) == "metapruning_cpu"
    old_grid = {**search, "params.method.population": "16", "params.method.grid": "[0.1, 0.13, 0.16]"}
    assert gm.label(old_grid) == "metapruning_cpu, grid 0.10-1.00"
    assert gm.label({**old_grid, "params.method.grid": "[0.4, 0.43, 0.46]"}) == "metapruning_cpu"
    assert gm.label({"tags.method": "acp", "tags.seed": "0", "params.method.particles": "8"}) == "acp (24 cand.)"


@pytest.mark.quick
def test_a_study_goes_on_in_a_new_checkout_where_it_left_off(tmp_path, monkeypatch):
    """The store is empty in a new checkout; the runs kept in results/study_runs/ are not run again. A list
    value's commas (measure.batch_sizes=[1,128]) are not grid axes, as in the harness's sweep."""
    import io
    import json

    args = ["tracking.experiment=exp", "method=l1,random", "measure.batch_sizes=[1,128]", "seed=0"]
    l1_key = study.run_key_of([*study.COMMON, "tracking.experiment=exp", "method=l1", "seed=0"])
    random_key = study.run_key_of([*study.COMMON, "tracking.experiment=exp", "method=random", "seed=0"])
    assert l1_key != random_key
    monkeypatch.setattr(study, "KEPT_RUNS", tmp_path)
    launched = []
    monkeypatch.setattr(study.subprocess, "call", lambda cmd, **kw: launched.append(cmd[4:]) or 0)

    assert study.sweep(args, io.StringIO()) == 0  # nothing kept: the whole grid in one sweep, as before
    assert launched == [[*study.COMMON, *args]]

    when = {"start_time": "2026-12-02T10:00:00Z", "end_time": "2026-12-02T11:00:00Z"}  # as load_runs writes them
    rows = [
        {"run_id": "a", "status": "FINISHED", "tags.run_key": l1_key, **when},
        {"run_id": "b", "status": "FAILED", "tags.run_key": random_key, **when},  # a failed run is run again
    ]
    (tmp_path / "exp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    launched.clear()
    log = io.StringIO()
    assert study.sweep(args, log) == 0
    assert launched == [
        [*study.COMMON, "tracking.experiment=exp", "method=random", "measure.batch_sizes=[1,128]", "seed=0"]
    ]
    assert "[kept] tracking.experiment=exp method=l1 'measure.batch_sizes=[1,128]' seed=0" in log.getvalue()


@pytest.mark.quick
def test_a_study_keeps_the_baselines_its_runs_pruned(tmp_path, monkeypatch):
    """A new checkout's baseline cache is empty: the kept baselines go back into it, byte for byte."""
    import pandas as pd

    monkeypatch.setattr(study, "BASELINES", tmp_path / "cache")
    monkeypatch.setattr(study, "KEPT_BASELINES", tmp_path / "kept")
    folder = tmp_path / "cache" / "resnet56" / "abc"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "meta.json").write_text('{"key": "abc"}')
    runs = pd.DataFrame(
        [
            {"tags.task": "resnet56", "tags.baseline_key": "abc"},
            {"tags.task": "resnet56", "tags.baseline_key": "gone"},  # not in this cache: nothing to keep
            {"tags.task": None, "tags.baseline_key": None},  # a run that failed before its baseline
        ]
    )
    study.keep_baselines(runs)
    assert sorted(p.name for p in (tmp_path / "kept" / "resnet56").iterdir()) == ["abc"]
    assert study.restore_baselines() == 0  # the cache has it
    (folder / "model.pt").unlink(), (folder / "meta.json").unlink()
    assert study.restore_baselines() == 1
    assert (folder / "model.pt").read_bytes() == b"weights" and (folder / "meta.json").read_text() == '{"key": "abc"}'


@pytest.mark.quick
def test_a_study_report_has_a_row_per_label_the_extra_columns_and_the_pairs_verdicts(tmp_path):
    import pandas as pd

    def run(label: str, seed: int, acc: float) -> dict:
        metrics = {"base_acc": 0.7, "pruned_acc": 0.3, "final_acc": acc, "flops_reduction": 0.5}
        metrics |= {"params_reduction": 0.4, "latency/b128/speedup": 1.5, "epochs_after_baseline": 8, "wall_s": 60}
        return {"label": label, "seed": seed, **{f"metrics.{k}": v for k, v in metrics.items()}}

    runs = pd.DataFrame([run("gfp", s, 0.66 + 0.01 * s) for s in range(3)] + [run("l1", s, 0.6) for s in range(3)])
    out = tmp_path / "table.md"
    extra = lambda g: {"note": "search"} if (g["label"] == "gfp").all() else {}  # noqa: E731
    assert (
        study.study_report(
            runs, [("gfp", "l1"), ("gfp", "none")], ["# Title"], "s.py", "logs", tmp_path / "w", out, extra
        )
        == 0
    )
    text = out.read_text()
    assert text.startswith("# Title\n")
    table = [line for line in text.splitlines() if line.split("|")[1:2] and line.split("|")[1].strip() in ("gfp", "l1")]
    assert len(table) == 2 and "search" in table[0] and "67.00 ± 1.00" in table[0]
    assert "gfp − l1" in text and "gfp ahead" in text and "gfp − none" not in text  # a pair with no runs is left out
    assert "python scripts/s.py report" in text


@pytest.mark.quick
def test_the_latency_study_matches_arms_on_their_retimed_latency_where_they_were_timed_together():
    import pandas as pd

    spec = importlib.util.spec_from_file_location(
        "latency_study", Path(__file__).parents[1] / "scripts" / "latency_study.py"
    )
    ls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ls)

    def run(run_id, arm, seed, at_end, retimed=None, with_=None):
        row = {"run_id": run_id, "label": f"l1 [{arm}]", "seed": seed, "batch": 128, "metrics.final_acc": 0.6,
               "metrics.latency_reduction_measured": at_end, "metrics.retime/b128/reduction": retimed,
               "tags.retime/b128/with": with_}  # fmt: skip
        cut, retimed_flag = ls.measured_cut(row, 128)
        return {**row, "cut": cut, "retimed": retimed_flag}

    runs = pd.DataFrame(
        [
            # seed 0: 6 points apart as each run measured itself, 1 point apart timed together: matched
            run("a0", "global", 0, 0.30, 0.30, "b0"),
            run("b0", "knapsack", 0, 0.36, 0.31, "a0"),
            # seed 1: never retimed, 5 points apart at run end: left out
            run("a1", "global", 1, 0.50),
            run("b1", "knapsack", 1, 0.55, float("nan")),
        ]
    )
    row = ls.matched_verdict(runs, "l1 [knapsack]", "l1 [global]")
    assert (row["matched seeds"], row["of them retimed together"], row["left out (latency differs)"]) == (1, 1, 1)
    pick = lambda *ids: runs[runs["run_id"].isin(ids)]  # noqa: E731
    assert study.timed_together(pick("a0", "b0"), 128) and not study.timed_together(pick("a1", "b1"), 128)
    assert not study.timed_together(pick("a0", "b0", "a1"), 128)  # a run not in that pass: retime them again


def test_a_study_retimes_only_the_runs_whose_model_file_is_still_there(tmp_path):
    import io

    import mlflow
    import pandas as pd

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(store)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    kept, gone = (client.create_run(experiment).info.run_id for _ in range(2))
    (tmp_path / "pruned_model.pt").write_bytes(b"x")
    client.log_artifact(kept, str(tmp_path / "pruned_model.pt"), "model")
    assert study.has_model({"run_id": kept}, client) and not study.has_model({"run_id": gone}, client)
    assert not study.has_model({"run_id": "0" * 32}, client)  # kept in the jsonl, never in this store
    log = io.StringIO()
    # one run with a model left: nothing to time it against, so no pass (and no command) at all
    assert study.retime(pd.DataFrame({"run_id": [kept, gone]}), 128, log, store=store) == 0
    assert log.getvalue() == ""


@pytest.mark.quick
def test_the_mosaic_study_pairs_gate_decorator_with_l1_fine_tuned_for_as_long(monkeypatch):
    """l1 with the task's 2-epoch fine-tune is `l1`, with any other length the equal-budget `l1+ft`; the report
    pairs gbn_cpu with both."""
    import pandas as pd

    spec = importlib.util.spec_from_file_location(
        "mosaic_study", Path(__file__).parents[1] / "scripts" / "mosaic_study.py"
    )
    ms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ms)

    def run(method: str, seed: int, final: float, finetune: int = 2, epochs: float = 2.0) -> dict:
        metrics = {"base_acc": 0.35, "pruned_acc": 0.1, "final_acc": final, "flops_reduction": 0.5, "wall_s": 60}
        metrics |= {"params_reduction": 0.4, "latency/b32/speedup": 1.4, "epochs_after_baseline": epochs}
        return {"tags.method": method, "tags.seed": str(seed), "params.finetune.epochs": str(finetune),
                **{f"metrics.{k}": v for k, v in metrics.items()}}  # fmt: skip

    rows = [run("gbn_cpu", s, 0.38 + 0.002 * s, epochs=10.4) for s in range(3)]
    rows += [run("l1", s, 0.336 + 0.001 * s) for s in range(3)]
    rows += [run("l1", s, 0.37 + 0.003 * s, finetune=10, epochs=10.0) for s in range(3)]
    assert [ms.label(r) for r in rows[3:7]] == ["l1", "l1", "l1", "l1+ft"]
    lines = []
    monkeypatch.setattr(
        ms, "labelled_runs", lambda exp, label: study.labelled_runs(exp, label, runs=pd.DataFrame(rows))
    )
    monkeypatch.setattr(ms, "finish_report", lambda text, wall, out: lines.extend(text) or 0)
    assert ms.report() == 0
    text = "\n".join(lines)
    pair = next(line for line in text.splitlines() if "gbn_cpu − l1+ft" in line)
    assert "+0.90" in pair and "gbn_cpu ahead" in pair  # (38.0, 38.2, 38.4) - (37.0, 37.3, 37.6): +1.0, +0.9, +0.8
    assert "gbn_cpu − l1 " in text and "l1+ft − l1 " in text
