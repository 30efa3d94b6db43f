"""Launching runs and sweeps: in this process, as local subprocesses, or as a SLURM job array, all
through submitit. Comma lists in overrides expand to the cartesian grid:

    python -m harness sweep task=digits method=gbn,l1 seed=0,1,2 launcher=slurm --wait

Every job runs ``harness.run.run`` on its own overrides. Jobs are submitit ``Checkpointable``: when
SLURM preempts or times a job out (USR2), submitit requeues it and the job resumes from the run's
own checkpoint into the same MLflow run. Concurrent jobs share one baseline per task + seed through
the baseline cache's file lock. With ``launcher.tasks_per_node`` or ``launcher.nodes`` above 1, each
job is one data-parallel run over all its tasks (harness/core/distributed.py): submitit exports the
rendezvous (MASTER_ADDR/PORT, RANK, WORLD_SIZE), rank 0 records, and rank 0 alone requeues on USR2.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import submitit
from omegaconf import DictConfig

from harness.config import compose
from harness.core.errors import ConfigError, raise_terminated


def split_values(value: str) -> list[str]:
    """``a,b,[1,2]`` -> ['a', 'b', '[1,2]']: commas inside brackets, braces or quotes do not split."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    return parts + [current]


def _is_launcher(key: str) -> bool:
    """launcher= and launcher.* configure the submission, not the runs."""
    key = key.lstrip("+~")
    return key == "launcher" or key.startswith("launcher.")


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of every comma list, in the order given; launcher settings are left out."""
    axes = []
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"expected key=value, got {item!r}")
        if _is_launcher(key):
            continue
        axes.append([f"{key}={v}" for v in split_values(value)])
    return [list(point) for point in itertools.product(*axes)]


class HarnessJob(submitit.helpers.Checkpointable):
    """One run, picklable for submitit. On preemption or time-out, ``checkpoint()`` (inherited)
    resubmits the same overrides; the run itself resumes from its checkpoint file."""

    def __init__(self, max_parallel: int | None = None, slots: Path | None = None):
        self.max_parallel, self.slots = max_parallel, slots

    def __call__(self, overrides: list[str]) -> dict:
        from harness.run import run

        preempted = threading.Event()
        if _job_tasks() > 1:  # a DDP job: rank, world size and rendezvous from SLURM
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            _note_preemption(preempted)
        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and threading.current_thread() is threading.main_thread():
            # submit() started the local controllers ignoring Ctrl-C, and this process inherited it; and
            # submitit's jobs ignore SIGTERM (SLURM's warning before a kill), which for a local job only
            # comes from ``wait`` cancelling it (through the controller): stop and record the run KILLED.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, raise_terminated)
        cfg = compose([*overrides, "launcher=inline", "quiet=true"])
        try:
            with run_slot(self.slots, self.max_parallel):
                return run(cfg)
        except Exception:
            # Rank 0 requeues on preemption and exits; the others then fail at their next collective.
            # Leaving without a result keeps submitit from reporting that as the job's outcome.
            if preempted.is_set():
                raise SystemExit("preempted: rank 0 has requeued the job") from None
            raise


def _note_preemption(event: threading.Event) -> None:
    """Set ``event`` when submitit's preemption signal (USR2) arrives, then let submitit handle it."""
    signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
    previous = signal.getsignal(signum)

    def handler(sig, frame):
        event.set()
        if callable(previous):
            previous(sig, frame)

    signal.signal(signum, handler)


def _job_tasks() -> int:
    """How many tasks (processes) the submitit job this runs in has; 1 outside one."""
    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:
        return 1


@contextlib.contextmanager
def run_slot(folder: Path | None, slots: int | None, poll: float = 0.5):
    """Hold one of ``slots`` lock files under ``folder`` (waiting for one to free up), so that at most
    ``slots`` jobs sharing the folder run at once; no limit when ``slots`` is None."""
    if not slots:
        yield
        return
    from harness.core.locks import LockTimeout, file_lock

    def take_one(stack: contextlib.ExitStack) -> bool:
        for k in range(slots):
            with contextlib.suppress(LockTimeout):
                stack.enter_context(file_lock(Path(folder) / f"slot{k}.lock", timeout=0))
                return True
        return False

    with contextlib.ExitStack() as stack:
        while not take_one(stack):
            time.sleep(poll)
        yield


def check_slurm() -> None:
    """Refuse ``launcher=slurm`` in one line, before anything is submitted, where no SLURM controller answers."""
    fix = "start one (bash scripts/slurm_local.sh start on one machine) or use launcher=local"
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise ConfigError(f"launcher=slurm: SLURM is not installed here (no sbatch/scontrol on PATH); {fix}")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"launcher=slurm: `scontrol ping` failed ({type(e).__name__}); {fix}") from None
    if "is UP" not in ping.stdout:
        raise ConfigError(f"launcher=slurm: no SLURM controller answers `scontrol ping`; {fix}")


SQLITE_WRITERS = 16  # concurrent SLURM jobs above which a sweep on the sqlite store is warned (docs/sweeps.md)


def warn_sqlite_writers(cfg: DictConfig, jobs: int) -> None:
    """One line when more than ``SQLITE_WRITERS`` SLURM jobs at once would share the sqlite file."""
    from harness.tracking import store_uri

    at_once = min(jobs, int(cfg.launcher.array_parallelism))
    if (
        cfg.tracking.enabled
        and at_once > SQLITE_WRITERS
        and store_uri(cfg.tracking.uri, cfg.results_dir).startswith("sqlite")
    ):
        print(
            f"warning: {at_once} SLURM jobs at once would write to one sqlite file (more than {SQLITE_WRITERS}); "
            "start a tracking server (scripts/mlflow_server.sh) and add tracking.uri=http://<host>:5000",
            file=sys.stderr,
            flush=True,
        )


def make_executor(cfg: DictConfig):
    launcher = cfg.launcher
    folder = Path(str(launcher.folder))
    if launcher.name == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int(launcher.timeout_min))
        return executor
    if launcher.name == "slurm":
        check_slurm()
        # cluster= explicitly: AutoExecutor would pick SLURM whenever srun is on PATH.
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        extra = {k: v for k, v in {"account": launcher.account, "qos": launcher.qos}.items() if v}
        extra.update(dict(launcher.additional or {}))
        executor.update_parameters(
            slurm_partition=launcher.partition or None,
            timeout_min=int(launcher.time_min),
            gpus_per_node=int(launcher.gpus_per_node),
            cpus_per_task=int(launcher.cpus_per_task),
            nodes=int(launcher.get("nodes") or 1),
            tasks_per_node=int(launcher.get("tasks_per_node") or 1),
            mem_gb=float(launcher.mem_gb),
            slurm_array_parallelism=int(launcher.array_parallelism),
            slurm_signal_delay_s=int(launcher.signal_delay_s),
            slurm_additional_parameters=extra,
            name=str(launcher.job_name),
        )
        return executor
    raise ConfigError(f"launcher {launcher.name!r} does not submit jobs")


def submit(overrides: list[str]) -> tuple[DictConfig, list[list[str]], list]:
    """Validate every grid point (so a typo fails before anything is submitted), then submit.

    Returns (config of the first point, the grid, the jobs or, for launcher=inline, the summaries)."""
    # Credentials in tracking.uri move to the environment, which jobs inherit (SLURM exports it), so the
    # job files under results/jobs never hold them.
    overrides = [_without_credentials(o) for o in overrides]
    grid = expand_grid(overrides)
    launcher = [o for o in overrides if _is_launcher(o.partition("=")[0])]
    cfgs = [compose([*point, *launcher]) for point in grid]
    cfg = cfgs[0]
    threads = cfg.launcher.get("threads_per_job")
    if threads and not any(o.startswith("threads=") for o in overrides):
        grid = [[*point, f"threads={threads}"] for point in grid]
    # Jobs may start in another working directory: pin the results folder.
    grid = [[*point, f"results_dir={Path(c.results_dir).resolve()}"] for point, c in zip(grid, cfgs)]
    if cfg.launcher.name == "inline":
        from harness.run import run

        return cfg, grid, [run(c) for c in cfgs]
    executor = make_executor(cfg)
    if cfg.launcher.name == "slurm":
        warn_sqlite_writers(cfg, len(grid))
    max_parallel = cfg.launcher.get("max_parallel")
    job = HarnessJob(max_parallel, Path(cfg.results_dir).resolve() / "jobs" / "slots")
    with _controllers_ignore_sigint(cfg.launcher.name == "local"):
        jobs = executor.map_array(job, grid)
    return cfg, grid, jobs


@contextlib.contextmanager
def _controllers_ignore_sigint(local: bool):
    """Start submitit's local job controllers with SIGINT ignored (the jobs restore it). On SIGINT, a
    controller SIGINTs its job and SIGKILLs it a second later: too soon for a loaded machine to record
    the run's end, so a Ctrl-C at the terminal, which reaches the whole process group, left runs RUNNING.
    Now the job takes Ctrl-C itself, and ``wait`` cancels with SIGTERM, which the controller forwards
    and then waits for."""
    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _without_credentials(override: str) -> str:
    from harness.tracking import take_credentials

    key, sep, value = override.partition("=")
    if key.lstrip("+~") != "tracking.uri" or not sep:
        return override
    return f"{key}={','.join(take_credentials(v) for v in split_values(value))}"


def wait(jobs) -> list[dict]:
    """Each job's summary, or {'status': ..., 'error': ...} for one that failed or was cancelled.
    Ctrl-C (SIGINT) cancels every job that has not finished, whose runs are then marked KILLED."""
    try:
        return _results(jobs)
    except KeyboardInterrupt:
        for job in jobs:
            with contextlib.suppress(Exception):
                if not job.done():
                    _cancel(job)
        print(f"interrupted: cancelled the unfinished jobs of {len(jobs)}", file=sys.stderr)
        raise


def _cancel(job) -> None:
    """scancel for SLURM jobs; SIGTERM to a local job's controller, which forwards it to the job and waits
    for it to record its run's end (submitit's ``cancel`` sends SIGINT, which the controller ignores:
    ``_controllers_ignore_sigint``)."""
    process = getattr(job, "_process", None)  # submitit's LocalJob keeps its controller here
    if isinstance(job, submitit.LocalJob) and process is not None:
        process.send_signal(signal.SIGTERM)
    else:
        job.cancel()


def _results(jobs) -> list[dict]:
    rows = []
    for job in jobs:
        try:
            # A DDP job (several tasks) returns one result per rank: rank 0's is the run's.
            rows.append({"job": job.job_id, "status": "DONE", **job.results()[0]})
        except Exception as e:
            rows.append({"job": job.job_id, "status": job.state, "error": str(e).strip().splitlines()[-1][:200]})
    return rows


def results_table(rows: list[dict], grid: list[list[str]]) -> str:
    import pandas as pd

    table = []
    for point, row in zip(grid, rows):
        table.append(
            {
                "overrides": " ".join(p for p in point if not p.startswith(("threads=", "results_dir="))),
                "status": row.get("status", "DONE"),
                "final_acc": row.get("final_acc"),
                "MACs ↓": row.get("flops_reduction"),
                "MLflow run": row.get("mlflow_run_id"),
                "error": row.get("error", ""),
            }
        )
    return pd.DataFrame(table).to_markdown(index=False, floatfmt=".4f")


def print_submitted(cfg: DictConfig, jobs) -> None:
    print(
        f"submitted {len(jobs)} job(s) with launcher={cfg.launcher.name}: "
        f"{', '.join(j.job_id for j in jobs[:8])}{' ...' if len(jobs) > 8 else ''}"
    )
    print(f"logs: {Path(str(cfg.launcher.folder)).resolve()}/<job id>_log.out|err", file=sys.stdout)
