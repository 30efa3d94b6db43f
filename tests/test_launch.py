"""Sweeps and launchers: grid expansion, in-process and local-subprocess sweeps, and a real SLURM."""

import subprocess
import time

import pytest
import torch

from harness.launch import expand_grid, split_values, submit, wait

TINY = [
    "task=digits",
    "train.epochs=1",
    "finetune.epochs=1",
    "measure.repeats=1",
    "measure.warmup=0",
    "measure.max_seconds=0",
    "measure.batch_sizes=[1]",
    "quiet=true",
]


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
    code, out, err = run_cli(
        "sweep", *TINY, "method=l1,random", "prune.flops_reduction=0.3,0.5", "tracking=none", f"results_dir={tmp_path}"
    )
    assert code == 0, err
    assert out.count("| DONE") == 4 and "method=random prune.flops_reduction=0.5" in out


def test_eight_concurrent_local_jobs_lose_nothing_in_one_store(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg, grid, jobs = submit(
        [*TINY, "method=random", "seed=0,1,2,3,4,5,6,7", "launcher=local", f"results_dir={tmp_path}"]
    )
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


def test_run_slots_bound_how_many_run_at_once(tmp_path):
    import threading

    from harness.launch import run_slot

    active, peak, lock = [0], [0], threading.Lock()

    def job():
        with run_slot(tmp_path / "slots", 2, poll=0.01):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.15)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak[0] == 2 and not list((tmp_path / "slots").glob("*.lock"))


def _store(results):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def test_local_max_parallel_runs_one_at_a_time(tmp_path):
    cfg, grid, jobs = submit(
        [*TINY, "method=random", "seed=0,1,2", "launcher=local", "launcher.max_parallel=1", f"results_dir={tmp_path}"]
    )
    assert [r["status"] for r in wait(jobs)] == ["DONE"] * 3
    runs = sorted(_store(tmp_path).search_runs(["1"]), key=lambda r: r.info.start_time)
    assert len(runs) == 3
    for a, b in zip(runs, runs[1:]):
        assert a.info.end_time <= b.info.start_time  # no two runs overlapped


def test_sigint_on_the_waiting_parent_cancels_its_jobs_and_marks_them_killed(tmp_path):
    import signal
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "sweep",
            *TINY,
            "train.epochs=400",
            "method=random",
            "seed=0,1",
            "launcher=local",
            f"results_dir={tmp_path}",
            "--wait",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def statuses():  # read the store with sqlite itself: an MLflow client could race the jobs creating it
        import sqlite3

        try:
            with sqlite3.connect(tmp_path / "mlflow.db") as db:
                return sorted(row[0] for row in db.execute("select status from runs"))
        except sqlite3.Error:
            return []

    deadline = time.time() + 120
    while time.time() < deadline and statuses() != ["RUNNING", "RUNNING"]:
        time.sleep(1)
    started = statuses() == ["RUNNING", "RUNNING"]
    time.sleep(2)
    proc.send_signal(signal.SIGINT)  # also when they have not started: it cancels them
    _, err = proc.communicate(timeout=60)
    assert started, "the two jobs did not start within 120 s (an overloaded machine?)"
    assert proc.returncode == 130 and "cancelled" in err
    deadline = time.time() + 60
    while time.time() < deadline and statuses() != ["KILLED", "KILLED"]:
        time.sleep(1)
    assert statuses() == ["KILLED", "KILLED"]


# --- a real SLURM (scripts/slurm_local.sh start; .ci/run does it) -------------------------------
def _slurm_up() -> bool:
    try:
        return "is UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


slurm = pytest.mark.skipif(
    not _slurm_up(),
    reason="no SLURM controller answers `scontrol ping`; start one with `bash scripts/slurm_local.sh start`",
)


@slurm
def test_slurm_sweep_2x2_lands_in_mlflow(run_cli, tmp_path):
    from mlflow.tracking import MlflowClient

    code, out, err = run_cli(
        "sweep",
        *TINY,
        "method=l1,random",
        "seed=0,1",
        "launcher=slurm",
        "threads=1",
        f"results_dir={tmp_path}",
        "--wait",
    )
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
    # What SLURM does on preemption: SIGTERM, then USR2. submitit's job._interrupt() sends both at once,
    # and slurmd may deliver the SIGTERM late, to the `scontrol requeue` the USR2 handler has just started
    # (seen once in ~10 runs). A real preemption leaves a grace period between them; so do we.
    subprocess.check_call(["scancel", job.job_id, "--signal", "SIGTERM"])
    time.sleep(2)
    from submitit.slurm.slurm import SlurmJobEnvironment

    subprocess.check_call(["scancel", job.job_id, "--signal", SlurmJobEnvironment.USR_SIG])
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


# --- launcher=slurm where SLURM is missing or down, and the sqlite store at scale ------------------------
def _fake_slurm(tmp_path, ping: str | None):
    """A PATH holding a fake sbatch (leaves a mark if anything is submitted) and, unless None, a
    fake scontrol whose ping prints ``ping``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path / 'submitted'}\nexit 1\n")
    if ping is not None:
        (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho '{ping}'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return str(bin_dir)


@pytest.mark.quick
@pytest.mark.parametrize(
    "ping, says",
    [(None, "SLURM is not installed here"), ("Slurmctld(primary) at vm is DOWN", "no SLURM controller answers")],
)
def test_slurm_launcher_without_a_controller_stops_in_one_line_before_submitting(
    run_cli, tmp_path, monkeypatch, ping, says
):
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path, ping))
    code, out, err = run_cli("sweep", *TINY, "method=l1,random", "launcher=slurm", f"results_dir={tmp_path}")
    assert code == 2
    assert says in err and "launcher=local" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "submitted").exists()


@pytest.mark.quick
def test_a_large_slurm_array_on_the_sqlite_store_is_warned_once(tmp_path, capsys):
    from harness.config import compose
    from harness.launch import SQLITE_WRITERS, warn_sqlite_writers

    cfg = compose(["launcher=slurm", f"results_dir={tmp_path}"])
    warn_sqlite_writers(cfg, SQLITE_WRITERS + 1)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "scripts/mlflow_server.sh" in err and "tracking.uri=" in err
    slurm = ["launcher=slurm", f"results_dir={tmp_path}"]
    warn_sqlite_writers(compose(slurm), SQLITE_WRITERS)  # not more than the limit
    warn_sqlite_writers(compose([*slurm, "tracking.uri=http://127.0.0.1:5000"]), 100)  # a server
    warn_sqlite_writers(compose([*slurm, "launcher.array_parallelism=8"]), 100)  # 8 at once
    assert capsys.readouterr().err == ""
