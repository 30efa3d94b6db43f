"""Full runs through the CLI, on tiny budgets, into temporary MLflow stores."""

import torch

from harness.artifacts import load_pruned
from tests.conftest import last_json
from tests.fixtures import make_cifar10

REQUIRED = {
    "task",
    "method",
    "seed",
    "base_acc",
    "pruned_acc",
    "final_acc",
    "base_macs",
    "final_macs",
    "flops_reduction",
    "base_params",
    "final_params",
    "latency",
    "mlflow_run_id",
}


def _client(results):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")


def test_full_run_is_recorded_in_mlflow_with_a_reloadable_model(run_cli, tiny_digits, tmp_path):
    code, out, err = run_cli("run", *tiny_digits, "method=l1", "prune.flops_reduction=0.5", "--json")
    assert code == 0, err
    s = last_json(out)
    assert REQUIRED <= s.keys()
    assert 0.5 <= s["flops_reduction"] <= 0.53
    assert s["final_macs"] < s["base_macs"] and s["final_params"] < s["base_params"]
    for lat in s["latency"].values():
        assert {"dense_ms", "pruned_ms", "speedup", "threads", "device", "batch_size"} <= lat.keys()
    assert {lat["batch_size"] for lat in s["latency"].values()} == {1, 64}

    client = _client(tmp_path / "results")
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["prune.flops_reduction"] == "0.5" and run.data.params["method.name"] == "l1"
    assert run.data.metrics["final_acc"] == s["final_acc"]
    assert len(client.get_metric_history(run.info.run_id, "baseline/acc")) == 2  # per epoch
    assert len(client.get_metric_history(run.info.run_id, "finetune/acc")) == 1
    assert len(client.get_metric_history(run.info.run_id, "prune/macs")) == 2  # dense + one pruning step
    assert run.data.metrics["latency/b64/others_paused"] == 1.0  # nothing else of the suite's was training
    assert 0 <= run.data.metrics["latency/b64/others_wait_s"] < 60

    local = client.download_artifacts(run.info.run_id, "model/pruned_model.pt", str(tmp_path))
    model = load_pruned(local)
    assert sum(p.numel() for p in model.parameters()) == s["final_params"]
    from harness.config import compose
    from tasks import create_task

    task = create_task(compose(["task=digits"]))
    _, test = task.datasets()
    acc = task.evaluate(model, torch.utils.data.DataLoader(test, batch_size=256), torch.device("cpu"))["acc"]
    assert acc == s["final_acc"]


def test_baseline_is_shared_and_runs_are_deterministic(run_cli, tiny_digits):
    args = [*tiny_digits, "tracking=none", "--json"]
    first = last_json(run_cli("run", *args, "method=random")[1])
    second = last_json(run_cli("run", *args, "method=random")[1])
    other = last_json(run_cli("run", *args, "method=l1")[1])
    assert not first["baseline_reused"] and second["baseline_reused"] and other["baseline_reused"]
    assert first["base_acc"] == second["base_acc"] == other["base_acc"]
    # Same seed, cached or freshly trained baseline: the same result.
    assert first["final_acc"] == second["final_acc"] and first["channels"] == second["channels"]
    assert first["channels"] != other["channels"]  # random and l1 really choose differently


def test_runs_of_other_seeds_can_share_one_baseline(run_cli, tiny_digits, tmp_path):
    """baseline_seed=0 under seed=1: seed 0's baseline, seed 1's pruning; trained afresh, the same baseline."""
    args = [*tiny_digits, "tracking=none", "method=random", "finetune.epochs=0", "measure.batch_sizes=[1]", "--json"]
    own = last_json(run_cli("run", *args, "seed=0")[1])
    shared = last_json(run_cli("run", *args, "seed=1", "baseline_seed=0")[1])
    assert shared["baseline_reused"] and shared["base_acc"] == own["base_acc"]
    assert shared["channels"] != own["channels"]  # seed 1's random choice, on seed 0's baseline
    fresh = last_json(run_cli("run", *args, "seed=1", "baseline_seed=0", f"results_dir={tmp_path / 'other'}")[1])
    assert not fresh["baseline_reused"]
    assert fresh["base_acc"] == own["base_acc"] and fresh["final_acc"] == shared["final_acc"]
    code, _, err = run_cli("run", *args, "baseline_seed=-1")
    assert code == 2 and "baseline_seed" in err and len(err.strip().splitlines()) == 1


def test_resnet_on_the_cifar_fixture(run_cli, tmp_path):
    make_cifar10(tmp_path / "data", per_batch=8, n_test=16)
    code, out, err = run_cli(
        "run",
        "task=resnet56",
        "model.name=resnet8",
        f"data.root={tmp_path / 'data'}",
        "data.check_integrity=false",
        "data.num_workers=0",
        "train.epochs=1",
        "finetune.epochs=1",
        "measure.batch_sizes=[1,4]",
        "measure.repeats=2",
        "measure.max_seconds=0",
        "tracking=none",
        "quiet=true",
        f"results_dir={tmp_path / 'r'}",
        "prune.flops_reduction=0.4",
        "--json",
    )
    assert code == 0, err
    s = last_json(out)
    assert s["task"] == "resnet56" and 0.4 <= s["flops_reduction"] <= 0.43


def test_failed_run_is_marked_failed_with_the_reason(run_cli, tmp_path):
    results = tmp_path / "results"
    code, _, err = run_cli(
        "run", "task=resnet56", f"data.root={tmp_path / 'missing'}", "quiet=true", f"results_dir={results}"
    )
    assert code == 3 and "data.download=true" in err and len(err.strip().splitlines()) == 1
    runs = _client(results).search_runs(["0", "1"], filter_string="")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "cifar-10-batches-py" in runs[0].data.tags["failure_reason"]


def test_every_epoch_after_the_baseline_is_counted(run_cli, tiny_digits):
    args = [*tiny_digits, "tracking=none", "measure.batch_sizes=[1]", "--json"]
    slim = last_json(
        run_cli(
            "run",
            *args,
            "method=slimming",
            "method.sparse_epochs=2",
            "finetune.tail_epochs=1",
            "finetune.tail_lr=0.001",
        )[1]
    )
    assert slim["prune_epochs"] == 2.0 and slim["epochs_after_baseline"] == 2.0 + 1 + 1  # sparse + fine-tune + tail
    l1 = last_json(run_cli("run", *args, "method=l1")[1])
    assert l1["prune_epochs"] == 0.0 and l1["epochs_after_baseline"] == 1.0
    gbn = last_json(run_cli("run", *args, "method=gbn_cpu", "method.tick_samples=256", "method.tick_p=0.1")[1])
    # A tock (1 epoch) first, then ticks of 256 samples (whole batches of 64) over the 1,347-image training set.
    ticks = (gbn["prune_epochs"] - 1) * 1347 / 256
    assert gbn["method"] == "gbn_cpu" and gbn["prune_epochs"] > 1 and abs(ticks - round(ticks)) < 1e-6


def test_skip_finished_reuses_a_finished_run_of_the_same_config(run_cli, tiny_digits, tmp_path):
    args = [*tiny_digits, "method=random", "measure.batch_sizes=[1]", "--json"]
    first = last_json(run_cli("run", *args, "skip_finished=true")[1])
    code, out, err = run_cli("run", *args, "skip_finished=true")
    again = last_json(out)
    assert code == 0 and again["skipped"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert again["final_acc"] == first["final_acc"] and "already finished" in err
    other = last_json(run_cli("run", *args, "skip_finished=true", "seed=1")[1])  # another config runs
    assert not other.get("skipped") and other["mlflow_run_id"] != first["mlflow_run_id"]
    client = _client(tmp_path / "results")
    assert (
        client.get_run(first["mlflow_run_id"]).data.tags["run_key"]
        != client.get_run(other["mlflow_run_id"]).data.tags["run_key"]
    )


def test_a_second_process_on_the_same_config_is_refused_and_a_killed_holder_leaves_no_stale_lock(
    run_cli, tiny_digits, tmp_path, monkeypatch
):
    """Two processes on one config would share its checkpoint file and MLflow run: the second is refused
    (exit 8, one line naming the holder) before anything is recorded; once the holder is killed (SIGKILL:
    no cleanup runs) the same command runs at once."""
    import subprocess
    import sys

    from harness.checkpoint import RunCheckpoint
    from harness.config import compose

    args = [*tiny_digits, "method=random", "measure.batch_sizes=[1]"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from harness.checkpoint import RunCheckpoint\nfrom harness.config import compose\n"
         "with RunCheckpoint(compose(sys.argv[1:])).held():\n    print('held', flush=True)\n    time.sleep(120)",
         *args],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(RunCheckpoint, "lock_wait_s", 0.5)
        code, out, err = run_cli("run", *args)
        assert code == 8 and f"being run now by pid {holder.pid} on " in err and err.count("\n") == 1, err
        assert not RunCheckpoint(compose(args)).path.exists()  # nothing of the run was written
        assert not (tmp_path / "results" / "mlflow.db").exists() or not _client(tmp_path / "results").search_runs(
            [e.experiment_id for e in _client(tmp_path / "results").search_experiments()]
        )
    finally:
        holder.kill()
        holder.wait()
    code, out, err = run_cli("run", *args, "--json")
    assert code == 0 and last_json(out)["final_acc"] > 0, err


def test_a_superseded_run_is_run_again_and_left_out_of_comparisons_but_kept(run_cli, tiny_digits, tmp_path):
    from harness.compare import load_runs

    results = tmp_path / "results"
    args = [*tiny_digits, "method=random", "measure.batch_sizes=[1]", "--json", "skip_finished=true"]
    first = last_json(run_cli("run", *args)[1])["mlflow_run_id"]
    code, out, err = run_cli("supersede", first, f"results_dir={results}")
    assert code == 2 and err.strip().startswith("error: supersede needs the run ids and why")
    code, out, err = run_cli("supersede", "0" * 32, "reason=x", f"results_dir={results}")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "holds no run" in err
    code, out, err = run_cli("supersede", first, "reason=trained in eval mode", f"results_dir={results}")
    assert code == 0 and "superseded 1 run" in out
    again = last_json(run_cli("run", *args)[1])
    assert not again.get("skipped") and again["mlflow_run_id"] != first  # skip_finished runs the config again
    uri = f"sqlite:///{results / 'mlflow.db'}"
    assert list(load_runs(uri, "harness")["run_id"]) == [again["mlflow_run_id"]]
    every = load_runs(uri, "harness", superseded=True).set_index("run_id")
    assert every.loc[first, "tags.harness.superseded"] == "trained in eval mode" and len(every) == 2


def test_budget_preset_overrides_the_task_recipe():
    from harness.config import compose

    cfg = compose(["task=resnet56", "budget=cifar10_dev", "method=gbn_cpu"])
    assert (cfg.train.epochs, cfg.train.schedule, cfg.train.nesterov) == (30, "onecycle", True)
    assert (cfg.finetune.epochs, cfg.finetune.tail_epochs, cfg.data.check_integrity) == (8, 0, False)
    assert (cfg.method.name, cfg.method.impl, cfg.method.tick_lr) == ("gbn_cpu", "gbn", 1e-3)  # gbn's other keys
    assert compose(["task=resnet56"]).finetune.tail_epochs == 10  # no budget: the paper recipe


def test_a_method_evaluating_inside_its_training_loop_keeps_training_in_train_mode(run_cli, tiny_digits, tmp_path):
    """Group Fisher evaluates every 10th decision mid-epoch: the rest of that epoch trained with BN frozen
    (and a detector's forward returned detections instead of losses) until evaluation restored the mode."""
    import torch_pruning as tp

    from methods import METHODS
    from methods.base import Method, register_method

    modes = []

    @register_method
    class EvaluatesMidEpoch(Method):
        name = "evaluates_mid_epoch_test"
        description = "records model.training around each of the context's evaluations"
        settings = None

        def prune(self, model, ctx):
            for evaluate in (lambda m: ctx.report.step(0, {}, m), ctx.report.epoch_metrics, ctx.validate):
                model.train()
                evaluate(model)
                modes.append(model.training)
                model.eval()
                evaluate(model)
                modes.append(model.training)
            return ctx.pruner.prune_to_target(model, tp.importance.RandomImportance(), ctx.target)

    try:
        code, out, err = run_cli(
            "run", *tiny_digits, "method=evaluates_mid_epoch_test", "data.val_fraction=0.1", "prune.flops_reduction=0.3"
        )
        assert code == 0, err
        assert modes == [True, False] * 3
    finally:
        METHODS.entries.pop("evaluates_mid_epoch_test", None)
