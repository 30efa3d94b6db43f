"""Sweeps and launchers: grid expansion, in-process and local-subprocess sweeps, and a real SLURM."""
import subprocess
import time

import pytest
import torch

from harness.launch import expand_grid, split_values, submit, wait

TINY = ["task=digits", "train.epochs=1", "finetune.epochs=1", "measure.repeats=1", "measure.warmup=0",
        "measure.batch_sizes=[1]", "quiet=true"]


def test_comma_lists_expand_to_the_cartesian_grid():
    assert split_values("gbn,l1,random") == ["gbn", "l1", "random"]
    assert split_values("[1,64],[1,128]") == ["[1,64]", "[1,128]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    grid = expand_grid(["task=digits", "method=gbn,l1", "seed=0,1,2", "launcher=slurm", "measure.batch_sizes=[1,64]"])
    assert len(grid) == 6 and grid[0] == ["task=digits", "method=gbn", "seed=0", "measure.batch_sizes=[1,64]"]
    assert grid[-1][1:3] == ["method=l1", "seed=2"]


def test_a_bad_grid_point_fails_before_anything_is_submitted(run_cli, tmp_path):
    code, _, err = run_cli("sweep", "task=digits", "method=l1,nope", f"results_dir={tmp_path}", "launcher=local")
    assert code == 2 and "unknown method 'nope'" in err
    assert not (tmp_path / "jobs").exists()


def test_inline_sweep_runs_the_grid_in_process(run_cli, tmp_path):
    code, out, err = run_cli("sweep", *TINY, "method=l1,random", "prune.flops_reduction=0.3,0.5", "tracking=none",
                             f"results_dir={tmp_path}")
    assert code == 0, err
    assert out.count("| DONE") == 4 and "method=random prune.flops_reduction=0.5" in out


def test_eight_concurrent_local_jobs_lose_nothing_in_one_store(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg, grid, jobs = submit([*TINY, "method=random", "seed=0,1,2,3,4,5,6,7", "launcher=local", f"results_dir={tmp_path}"])
    rows = wait(jobs)
    assert [r["status"] for r in rows] == ["DONE"] * 8, rows
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(["1"])
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["seed"] for r in runs) == [str(s) for s in range(8)]
    for row in rows:
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.metrics["final_acc"] == row["final_acc"]
        assert len(client.get_metric_history(run.info.run_id, "baseline/acc")) == 1
        assert len(client.get_metric_history(run.info.run_id, "finetune/acc")) == 1
        assert {"method.name", "prune.flops_reduction", "train.epochs", "finetune.lr"} <= run.data.params.keys()
        assert run.data.params["seed"] == run.data.tags["seed"]


# --- a real SLURM (scripts/slurm_local.sh start; .ci/run does it) -------------------------------
def _slurm_up() -> bool:
    try:
        return "is UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


slurm = pytest.mark.skipif(not _slurm_up(), reason="no SLURM controller answers `scontrol ping`; "
                                                   "start one with `bash scripts/slurm_local.sh start`")


@slurm
def test_slurm_sweep_2x2_lands_in_mlflow(run_cli, tmp_path):
    from mlflow.tracking import MlflowClient

    code, out, err = run_cli("sweep", *TINY, "method=l1,random", "seed=0,1", "launcher=slurm", "threads=1",
                             f"results_dir={tmp_path}", "--wait")
    assert code == 0, out + err
    assert "submitted 4 job(s) with launcher=slurm" in out and out.count("| DONE") == 4
    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}


@slurm
def test_slurm_cancel_is_reported_as_cancelled(tmp_path):
    cfg, grid, (job,) = submit([*TINY, "train.epochs=500", "launcher=slurm", "threads=1", f"results_dir={tmp_path}"])
    deadline = time.time() + 120
    while job.state not in ("RUNNING",) and time.time() < deadline:
        time.sleep(0.5)
    job.cancel()
    job._results_timeout_s = 2
    (row,) = wait([job])
    assert row["status"].startswith("CANCELLED"), row


@slurm
def test_slurm_requeue_mid_run_resumes_and_finishes(tmp_path):
    from mlflow.tracking import MlflowClient

    overrides = [*TINY, "method=l1", "train.epochs=3", "finetune.epochs=30", "threads=1", f"results_dir={tmp_path}"]
    cfg, grid, (job,) = submit([*overrides, "launcher=slurm"])
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 300
    while True:  # wait until fine-tuning has checkpointed an epoch, then preempt
        files = list(checkpoints.glob("*.pt"))
        try:
            state = torch.load(files[0], weights_only=True) if files else None
        except Exception:
            state = None
        if state and state["stage"] == "finetune" and state["train"]["epoch"] >= 2:
            break
        assert job.state in ("PENDING", "RUNNING", "CONFIGURING", "UNKNOWN"), job.state
        assert time.time() < deadline
        time.sleep(0.2)
    job._interrupt()  # what SLURM does on preemption: SIGTERM, then USR2
    result = job.result()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs(["1"])
    assert run.info.run_id == result["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags.get("resumed") == "true"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "finetune/acc")][-1] == 29
    # The same result as a run that was never interrupted.
    from harness.config import compose
    from harness.run import run as run_inline

    plain = run_inline(compose([*overrides[:-1], f"results_dir={tmp_path / 'plain'}", "tracking=none"]))
    assert (result["final_acc"], result["channels"]) == (plain["final_acc"], plain["channels"])
