"""Full runs through the CLI, on tiny budgets, into temporary MLflow stores."""
import torch

from harness.artifacts import load_pruned
from tests.conftest import last_json
from tests.fixtures import make_cifar10

REQUIRED = {"task", "method", "seed", "base_acc", "pruned_acc", "final_acc", "base_macs", "final_macs",
            "flops_reduction", "base_params", "final_params", "latency", "mlflow_run_id"}


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


def test_resnet_on_the_cifar_fixture(run_cli, tmp_path):
    make_cifar10(tmp_path / "data", per_batch=8, n_test=16)
    code, out, err = run_cli("run", "task=resnet56", "model.name=resnet8", f"data.root={tmp_path / 'data'}",
                             "data.check_integrity=false", "data.num_workers=0", "train.epochs=1", "finetune.epochs=1", "measure.batch_sizes=[1,4]",
                             "measure.repeats=2", "tracking=none", "quiet=true", f"results_dir={tmp_path / 'r'}",
                             "prune.flops_reduction=0.4", "--json")
    assert code == 0, err
    s = last_json(out)
    assert s["task"] == "resnet56" and 0.4 <= s["flops_reduction"] <= 0.43


def test_failed_run_is_marked_failed_with_the_reason(run_cli, tmp_path):
    results = tmp_path / "results"
    code, _, err = run_cli("run", "task=resnet56", f"data.root={tmp_path / 'missing'}", "quiet=true",
                           f"results_dir={results}")
    assert code == 3 and "data.download=true" in err and len(err.strip().splitlines()) == 1
    runs = _client(results).search_runs(["0", "1"], filter_string="")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "cifar-10-batches-py" in runs[0].data.tags["failure_reason"]
