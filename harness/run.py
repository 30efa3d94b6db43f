"""The one run loop: setup and the checks made before any data is read, then the phases of harness/phases/
(baseline -> prune -> fine-tune -> measure -> record) over one ``RunState``.

Each phase re-seeds from ``cfg.seed`` and every training epoch from (seed, epoch), so a run gives the
same result whether its baseline was trained now or loaded from the cache, and whether it ran
through or was killed and resumed from its checkpoint (``harness/checkpoint.py``).
"""

from __future__ import annotations

import os
import sys

import torch
from omegaconf import DictConfig

from harness import baseline as baseline_cache
from harness import phases
from harness.checkpoint import RunCheckpoint
from harness.core import distributed
from harness.core.errors import ConfigError
from harness.core.surgery import ChannelPruner
from harness.core.train import seed_everything
from harness.latency import allocator
from harness.phases import RunState
from harness.phases.prune import prepare_latency_target
from harness.phases.record import record_end
from harness.tracking import flatten, make_tracker
from methods import METHODS, create_method, create_regularizer
from tasks import create_task


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but torch sees no CUDA device here; use device=cpu or device=auto")
    return torch.device(name)


class Reporter:
    """Human-readable progress lines on stderr (stdout stays free for --json)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)


def run(cfg: DictConfig) -> dict:
    cfg, device = _set_up_process(cfg)
    task, method, regularizer = create_task(cfg), create_method(cfg), create_regularizer(cfg)
    say = Reporter(cfg.quiet)
    latency_target = method.prunes and cfg.prune.get("target") == "latency"
    target = (
        float(cfg.prune.latency_reduction if latency_target else cfg.prune.flops_reduction) if method.prunes else 0.0
    )
    model, pruner = _build_and_check(cfg, task, method, target, latency_target)

    checkpoint = RunCheckpoint(cfg)
    with checkpoint.held():  # a second process on this config is refused, not let share the file
        state = _checkpoint_state(cfg, checkpoint)
        tracker = make_tracker(cfg)
        if cfg.get("skip_finished") and (done := distributed.broadcast(tracker.find_finished(checkpoint.key))):
            say(f"[skip] MLflow run {done['mlflow_run_id']} already finished this config (skip_finished=true)")
            return {"skipped": True, "task": task.name, "method": cfg.method.name, "seed": int(cfg.seed), **done}
        # From here on an interrupt, wherever it lands, ends the run it finds (KILLED or FAILED), never leaving
        # it RUNNING: ``tracker.end`` does nothing before the run exists.
        try:
            run = RunState(
                cfg, task, method, regularizer, pruner, target, latency_target, device, tracker, checkpoint, say,
                model=model, resume=state,
            )  # fmt: skip
            _start_tracking(run)
            summary = _execute(run)
            tracker.flush()  # raises if the store still cannot take what was buffered
        except BaseException as e:
            for _ in range(3):  # a signal landing on this very line must not skip the record (see record_end)
                try:
                    record_end(tracker, e)
                    break
                except KeyboardInterrupt:
                    continue
            raise
        tracker.end("FINISHED")
        checkpoint.clear()
        return summary


def _set_up_process(cfg: DictConfig) -> tuple[DictConfig, torch.device]:
    """Threads, the latency gate, the allocator, the device and (under torchrun) the process group."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    os.environ["HARNESS_PAUSE_OTHERS"] = "1" if cfg.measure.get("pause_others", True) else "0"  # core/gate.py
    if cfg.measure.get("steady_allocator", True):
        allocator.hold_steady()  # else the phases of a run time one model differently (latency/allocator.py)
    device = distributed.setup(resolve_device(cfg.device))
    if not distributed.is_main():  # rank 0 prints; the others stay silent
        cfg = cfg.copy()
        cfg.quiet = True
    return cfg, device


def _build_and_check(cfg: DictConfig, task, method, target: float, latency_target: bool):
    """The untrained model and its pruner, after the cheap checks made before any data is read or any
    training starts (ConfigError, one line)."""
    if method.needs_scores and not task.train_step().scores:
        usable = [n for n in METHODS.names() if not METHODS.get(n).needs_scores]
        raise ConfigError(
            f"method {cfg.method.name} reads the model's class scores on (input, label) batches, but task "
            f"{task.name} trains through its own losses (a detector); choose one of: {', '.join(usable)}"
        )
    seed_everything(baseline_cache.baseline_seed(cfg))  # the model's initial weights are the baseline's
    model = task.build_model()
    pruner = ChannelPruner(
        model,
        task.example_input(1),
        task.output_layers(model),
        cfg.prune.min_channels_ratio,
        cfg.prune.get("round_to"),
        normalize=cfg.prune.get("normalize") or method.default_normalize,
        allocation=cfg.prune.get("allocation") or "global",
    )
    if pruner.allocation == "knapsack" and not method.uses_allocation:
        raise ConfigError(
            f"method {cfg.method.name} chooses its own widths, so prune.allocation=knapsack would be ignored; it "
            "applies to the rankings (l1, slimming, aip, gbn's ticks): drop it or choose one of those"
        )
    if cfg.prune.get("normalize") not in (None, "none") and not method.uses_normalize and method.prunes:
        raise ConfigError(
            f"method {cfg.method.name} does not rank channels across layers by a score (a uniform rate per layer "
            f"or a width search), so prune.normalize={cfg.prune.normalize} would be ignored; drop it"
        )
    # max_reduction also refuses, by name, a structure the surgery cannot prune; a latency target's
    # reachability and the method's own checks run on its latency table (phases.prune.prepare_latency_target).
    method.check_model(model)
    if target > 0 and not latency_target:
        method.check_target(model, pruner, target)
        if pruner.max_reduction(model) < target:
            raise ConfigError(pruner.unreachable_message(model, target))
    return model, pruner


def _checkpoint_state(cfg: DictConfig, checkpoint: RunCheckpoint) -> dict | None:
    """The checkpoint this config continues from (``resume``: auto, true or false), rank 0's on every rank."""
    if str(cfg.resume).lower() == "false":
        checkpoint.clear()
        return None
    state = distributed.broadcast(checkpoint.load() if distributed.is_main() else None)
    if checkpoint.note:  # shown even with quiet=true: the user should know a checkpoint was bad
        print(f"warning: {checkpoint.note}", file=sys.stderr, flush=True)
    if state is None and str(cfg.resume).lower() == "true":
        raise ConfigError(
            f"resume=true but there is no checkpoint at {checkpoint.path} for this config; run without resume= to start"
        )
    return state


def _start_tracking(run: RunState) -> None:
    """The MLflow run: the checkpoint's, continued, or a new one with the config as params. A checkpoint of
    stage ``start`` (a kill during the baseline) continues into its MLflow run and resumes nothing else."""
    cfg, tracker, checkpoint, state = run.cfg, run.tracker, run.checkpoint, run.resume
    if state and state.get("mlflow_run_id") and tracker.resume(state["mlflow_run_id"]):
        run.say(f"[resume] {state['stage']} checkpoint {checkpoint.path}, MLflow run {state['mlflow_run_id']}")
    else:
        tracker.start(
            flatten(cfg),
            tags={
                "task": run.task.name,
                "method": cfg.method.name,
                "seed": cfg.seed,
                "run_key": checkpoint.key,
                "regularizer": cfg.regularizer.name,
                "normalize": run.pruner.normalize,
                "allocation": run.pruner.allocation,
                "reconstruction": str(bool(getattr(run.method, "reconstruction", False))).lower(),
                **{f"ddp_{k}": v for k, v in distributed.describe().items()},
                "mlflow.runName": f"{run.task.name}-{cfg.method.name}-r{run.target:g}-s{cfg.seed}",
            },
        )
    if state is None or state["stage"] == "start":
        checkpoint.save({"stage": "start", "mlflow_run_id": tracker.run_id or ""})
        run.resume = None


def _execute(run: RunState) -> dict:
    """The data, a latency target's table (before any training, on the untrained model), then the phases."""
    run.open_data()
    if run.latency_target and not run.resumes_at("pruned", "finetune"):
        prepare_latency_target(run)
    for phase in phases.PHASES:  # read at each run: a test may stop one at its boundary
        phase(run)
    return run.summary
