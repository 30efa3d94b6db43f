"""Faults and bad input: a clear error every time, nothing lost, nothing faked (README: Failure and recovery)."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import last_json
from tests.fixtures import make_cifar10, make_cub200, make_voc2011

ROOT = Path(__file__).resolve().parents[2]


def _client(results):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def _runs(results):
    return _client(results).search_runs(["0", "1"])


# --- configuration errors: exit 2, before any training, one line ----------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["task=nope"], "unknown task"),
        (["method=nope"], "unknown method"),
        (["train.nope=1"], "unknown key 'train.nope'"),
        (["train.epochs=abc"], "train.epochs must be an integer"),
        (["prune.flops_reduction=1.5"], "must be a number in [0, 1)"),
        (["prune.flops_reduction=-0.1"], "must be a number in [0, 1)"),
        (["train.epochs=0"], "train.epochs must be an integer in [1, 100000]"),
        (["prune.flops_reduction=0.99"], "is unreachable"),
    ],
)
def test_config_errors_stop_before_training(run_cli, tmp_path, args, message):
    code, _, err = run_cli("run", "task=digits", f"results_dir={tmp_path}", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "baselines").exists() and not (tmp_path / "mlflow.db").exists()


# --- data errors: exit 3, the file named, the run marked FAILED --------------------------------
def _corrupt_cifar(root):
    folder = make_cifar10(root)
    (folder / "data_batch_2").write_bytes(b"\x80\x02garbage")
    return ["task=resnet56", f"data.root={root}", "data.check_integrity=false"], "data_batch_2"


def _missing_root(root):
    return ["task=resnet56", f"data.root={root / 'absent'}"], str(root / "absent")


def _missing_split(root):
    make_voc2011(root)
    (root / "VOCdevkit/VOC2011/ImageSets/Segmentation/train.txt").unlink()
    return ["task=fcn_voc2011", f"data.root={root}", "data.size=32"], "train.txt"


def _bad_image(root):
    base = make_cub200(root)
    bad = next((base / "images").rglob("*_0.jpg"))
    bad.write_bytes(b"\xff\xd8 truncated")
    return ["task=cub200", "model=tv:resnet18", f"data.root={root}", "data.size=32"], bad.name


def _label_out_of_range(root):
    base = make_cub200(root)
    (base / "image_class_labels.txt").write_text(
        (base / "image_class_labels.txt").read_text().replace("1 1\n", "1 999\n", 1)
    )
    return ["task=cub200", "model=tv:resnet18", f"data.root={root}", "data.size=32"], "image_class_labels.txt"


@pytest.mark.parametrize("make", [_corrupt_cifar, _missing_root, _missing_split, _bad_image, _label_out_of_range])
def test_data_errors_name_the_file(run_cli, tmp_path, make):
    args, name = make(tmp_path / "data")
    results = tmp_path / "results"
    code, _, err = run_cli(
        "run", *args, "method=l1", "data.num_workers=0", "train.epochs=1", "quiet=true", f"results_dir={results}"
    )
    assert code == 3, err
    assert name in err and len(err.strip().splitlines()) == 1
    (run,) = _runs(results)
    assert run.info.status == "FAILED" and name in run.data.tags["failure_reason"]


# --- numerical failure -------------------------------------------------------------------------
class NanAfter(torch.nn.CrossEntropyLoss):
    """A loss that turns NaN after ``n`` training steps: the injected fault. (Evaluation also calls
    the task's loss, under no_grad; those calls are not counted.)"""

    calls = 0

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, out, y):
        loss = super().forward(out, y)
        if not out.requires_grad:
            return loss
        NanAfter.calls += 1
        return loss * float("nan") if NanAfter.calls > self.n else loss


def test_nan_loss_stops_within_one_step_and_keeps_the_checkpoint(run_cli, tiny_digits, tmp_path, monkeypatch):
    from tasks.digits import DigitsTask

    # 2 baseline epochs of 22 steps, then NaN on the 3rd fine-tuning step.
    steps_before = 2 * 22 + 2
    NanAfter.calls = 0
    monkeypatch.setattr(DigitsTask, "loss_fn", lambda self: NanAfter(steps_before))
    code, out, err = run_cli("run", *tiny_digits, "method=l1", "finetune.epochs=2")
    assert code == 4 and "loss became nan at epoch 1, step 3" in err and out == ""
    assert NanAfter.calls == steps_before + 1  # stopped at the first bad step
    (run,) = _runs(tmp_path / "results")
    assert run.info.status == "FAILED" and "NumericalError" in run.data.tags["failure_reason"]
    assert "final_acc" not in run.data.metrics
    checkpoints = list((tmp_path / "results" / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=True)
    assert state["stage"] == "pruned" and state["mlflow_run_id"] == run.info.run_id


# --- kill and resume ---------------------------------------------------------------------------
RUN = [
    "task=digits",
    "method=gbn",
    "train.epochs=6",
    "finetune.epochs=4",
    "prune.flops_reduction=0.3",
    "method.tick_p=0.05",
    "method.tock_every=2",
    "method.tock_epochs=1",
    "method.tick_samples=256",
    "measure.repeats=1",
    "measure.max_seconds=0",
    "measure.warmup=0",
    "measure.batch_sizes=[1]",
    "threads=1",
]


def _cli(results, *extra):
    return [sys.executable, "-m", "harness", "run", *RUN, f"results_dir={results}", *extra, "--json"]


def _run_to_end(results):
    proc = subprocess.run(_cli(results), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _run_to_end(tmp_path_factory.mktemp("uninterrupted"))


def _kill_when(results, ready, sig):
    """Start a run, wait until ``ready(stderr so far, results)``, then send ``sig``."""
    err_path = results / "stderr.txt"
    results.mkdir(parents=True, exist_ok=True)
    with open(err_path, "w") as err:
        proc = subprocess.Popen(_cli(results), stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        deadline = time.time() + 300
        while not ready(err_path.read_text(), results):
            assert proc.poll() is None, f"the run ended before the fault: {err_path.read_text()}"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    return proc.returncode, err_path.read_text()


def _stage(results):
    files = list((results / "checkpoints").glob("*.pt"))
    try:
        return torch.load(files[0], weights_only=True) if files else None
    except Exception:  # caught mid-replace
        return None


PHASES = {
    "baseline": lambda err, r: any(r.glob("baselines/digits/*/partial.pt")),
    "pruning": lambda err, r: (s := _stage(r)) is not None and s["stage"] == "pruning" and s["method"]["tick"] >= 2,
    "finetune": lambda err, r: (s := _stage(r)) is not None and s["stage"] == "finetune" and s["train"]["epoch"] >= 1,
}


# Each phase once, both signals covered (all six pairs passed when written; each costs ~40 s).
@pytest.mark.parametrize(
    "phase, sig", [("baseline", signal.SIGKILL), ("pruning", signal.SIGTERM), ("finetune", signal.SIGKILL)]
)
def test_kill_then_the_same_command_resumes_to_the_same_result(tmp_path, uninterrupted, phase, sig):
    results = tmp_path / "results"
    code, err = _kill_when(results, PHASES[phase], sig)
    assert code in (-signal.SIGKILL, 143), (code, err)
    (killed,) = _runs(results)
    assert killed.info.status == ("RUNNING" if sig == signal.SIGKILL else "KILLED")
    before = _stage(results)
    before_s = before.get("elapsed_s", 0.0) if before else 0.0
    assert phase == "baseline" or before_s > 0  # pruning and fine-tune checkpoints carry the time so far

    resumed = _run_to_end(results)
    assert resumed["wall_s"] > before_s  # the whole run's time, not only the last attempt's
    assert resumed["mlflow_run_id"] == killed.info.run_id  # continued into the same MLflow run
    for key in ("final_acc", "pruned_acc", "base_acc", "final_macs", "final_params", "channels"):
        assert resumed[key] == uninterrupted[key], key
    (run,) = _runs(results)
    assert run.info.status == "FINISHED"
    assert not list((results / "checkpoints").glob("*.pt"))  # a finished run leaves no checkpoint


# --- files ---------------------------------------------------------------------------------------
def test_corrupt_baseline_cache_is_rebuilt_not_loaded(run_cli, tiny_digits, tmp_path):
    first = last_json(run_cli("run", *tiny_digits, "tracking=none", "--json")[1])
    (cache,) = (tmp_path / "results" / "baselines").rglob("model.pt")
    cache.write_bytes(cache.read_bytes()[: len(cache.read_bytes()) // 2])  # a torn write
    code, out, err = run_cli("run", *tiny_digits, "tracking=none", "quiet=false", "--json")
    assert code == 0 and "unreadable" in err and "retraining" in err
    second = last_json(out)
    assert not second["baseline_reused"] and second["base_acc"] == first["base_acc"]


def test_every_checkpoint_load_is_weights_only():
    loads = []
    for folder in ("harness", "methods", "tasks"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                if re.search(r"torch\.load\(", line):
                    loads.append((path.name, line))
    assert loads and all("weights_only=True" in line for _, line in loads), loads


# --- concurrency ---------------------------------------------------------------------------------
def test_two_runs_needing_one_baseline_train_it_once(tmp_path):
    results = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness",
                "run",
                "task=digits",
                f"method={m}",
                "train.epochs=4",
                "finetune.epochs=1",
                "measure.repeats=1",
                "measure.max_seconds=0",
                "threads=1",
                "tracking=none",
                "quiet=true",
                f"results_dir={results}",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for m in ("l1", "random")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    summaries = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(s["baseline_reused"] for s in summaries) == [False, True]
    assert summaries[0]["base_acc"] == summaries[1]["base_acc"]
    assert len(list(results.rglob("model.pt"))) == 1 and not list(results.rglob("partial.pt"))


# --- store failure -------------------------------------------------------------------------------
def _flaky_log_batch(monkeypatch, fail_from, fail_until):
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_batch
    calls = {"n": 0}

    def log_batch(self, *args, **kwargs):
        calls["n"] += 1
        if fail_from <= calls["n"] < fail_until:
            raise ConnectionError("store unreachable (injected)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    monkeypatch.setattr("harness.tracking.MlflowTracker.RETRIES", (0.0,))


def test_store_outage_mid_run_is_buffered_and_nothing_is_lost(run_cli, tiny_digits, tmp_path, monkeypatch):
    _flaky_log_batch(monkeypatch, fail_from=4, fail_until=12)
    code, out, err = run_cli("run", *tiny_digits, "train.epochs=3", "--json")
    assert code == 0, err
    assert "training goes on" in err
    s = last_json(out)
    client = _client(tmp_path / "results")
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["final_acc"] == s["final_acc"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "baseline/acc")] == [0, 1, 2]
    assert not list((tmp_path / "results" / "tracking_buffer").glob("*.jsonl"))  # drained: removed


def test_store_down_at_the_end_never_reports_success(run_cli, tiny_digits, tmp_path, monkeypatch):
    _flaky_log_batch(monkeypatch, fail_from=8, fail_until=10**9)
    code, out, err = run_cli("run", *tiny_digits, "--json")
    assert code == 5 and out == ""
    assert "did not take" in err and "tracking_buffer" in err
    assert list((tmp_path / "results" / "tracking_buffer").glob("*.jsonl"))
    assert list((tmp_path / "results" / "checkpoints").glob("*.pt"))  # kept for the retry


def test_a_store_that_never_answered_fails_fast_before_any_training(tmp_path):
    """A typo in the port (nothing listens there): one line naming the URI and the fix, exit 5, within the
    start wait (20 s by default), nothing trained. A store that answered earlier stays waited for."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "task=digits", f"tracking.uri=http://127.0.0.1:{port}/",
         f"results_dir={tmp_path / 'results'}", "quiet=true"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HARNESS_TRACKING_START_WAIT_S": "5"},
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"nothing answered at tracking store http://127.0.0.1:{port}/" in errors[0]
    assert "HARNESS_TRACKING_START_WAIT_S" in errors[0] and "(a bug" not in proc.stderr
    assert time.monotonic() - started < 90  # 5 s of waiting + start-up, even on a loaded machine
    assert not (tmp_path / "results" / "baselines").exists()  # nothing trained


def test_a_403_from_the_store_is_one_line_naming_the_user_and_the_permission(run_cli, tiny_digits, monkeypatch):
    """A user without the right to create runs (or experiments): exit 5, one line, before any training."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED
    from mlflow.tracking import MlflowClient

    def refuse(self, *args, **kwargs):  # what MLflow's REST client raises for the server's 403
        raise MlflowException("Permission denied for this resource.", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(MlflowClient, "create_run", refuse)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    code, out, err = run_cli("run", *tiny_digits, "--json")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 5 and out == "" and len(errors) == 1, err
    assert "refused user 'reader'" in errors[0] and "403 PERMISSION_DENIED" in errors[0] and "EDIT" in errors[0]
    assert "(a bug" not in err
