"""The one run loop: baseline -> prune -> fine-tune -> measure -> record.

Each phase re-seeds from ``cfg.seed`` and every training epoch from (seed, epoch), so a run gives the
same result whether its baseline was trained now or loaded from the cache, and whether it ran
through or was killed and resumed from its checkpoint (``harness/checkpoint.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from harness import baseline as baseline_cache
from harness.artifacts import model_from_payload, pruned_payload, save_pruned
from harness.checkpoint import RunCheckpoint
from harness.core import distributed
from harness.core.errors import ConfigError, Terminated
from harness.core.gate import GatedLoader
from harness.core.surgery import ChannelPruner, channel_widths, count_macs_params, eval_mode
from harness.core.train import CountingLoader, total_epochs, train
from harness.latency import allocator
from harness.latency import target as latency_target
from harness.latency.measure import compare_latency
from harness.tracking import flatten, make_tracker
from methods import METHODS, PruneContext, create_method, create_regularizer
from tasks import create_task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    os.environ["HARNESS_PAUSE_OTHERS"] = "1" if cfg.measure.get("pause_others", True) else "0"  # core/gate.py
    if cfg.measure.get("steady_allocator", True):
        allocator.hold_steady()  # else the phases of a run time one model differently (latency/allocator.py)
    device = distributed.setup(resolve_device(cfg.device))
    if not distributed.is_main():  # rank 0 prints; the others stay silent
        cfg = cfg.copy()
        cfg.quiet = True
    task, method, regularizer = create_task(cfg), create_method(cfg), create_regularizer(cfg)
    say = Reporter(cfg.quiet)
    latency_target = method.prunes and cfg.prune.get("target") == "latency"
    target = (
        float(cfg.prune.latency_reduction if latency_target else cfg.prune.flops_reduction) if method.prunes else 0.0
    )

    # Cheap checks before any data is read or any training starts.
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
    # reachability and the method's own checks run on its latency table (prepare_latency_target).
    method.check_model(model)
    if target > 0 and not latency_target:
        method.check_target(model, pruner, target)
    if target > 0 and pruner.max_reduction(model) < target and not latency_target:
        raise ConfigError(pruner.unreachable_message(model, target))

    checkpoint = RunCheckpoint(cfg)
    with checkpoint.held():  # a second process on this config is refused, not let share the file
        state = None
        if str(cfg.resume).lower() == "false":
            checkpoint.clear()
        else:
            state = distributed.broadcast(checkpoint.load() if distributed.is_main() else None)
            if checkpoint.note:  # shown even with quiet=true: the user should know a checkpoint was bad
                print(f"warning: {checkpoint.note}", file=sys.stderr, flush=True)
            if state is None and str(cfg.resume).lower() == "true":
                raise ConfigError(
                    f"resume=true but there is no checkpoint at {checkpoint.path} for this config; "
                    "run without resume= to start"
                )

        tracker = make_tracker(cfg)
        key = checkpoint.key
        if cfg.get("skip_finished") and (done := distributed.broadcast(tracker.find_finished(key))):
            say(f"[skip] MLflow run {done['mlflow_run_id']} already finished this config (skip_finished=true)")
            return {"skipped": True, "task": task.name, "method": cfg.method.name, "seed": int(cfg.seed), **done}
        # From here on an interrupt, wherever it lands, ends the run it finds (KILLED or FAILED), never leaving
        # it RUNNING: ``tracker.end`` does nothing before the run exists.
        try:
            if state and state.get("mlflow_run_id") and tracker.resume(state["mlflow_run_id"]):
                say(f"[resume] {state['stage']} checkpoint {checkpoint.path}, MLflow run {state['mlflow_run_id']}")
            else:
                tracker.start(
                    flatten(cfg),
                    tags={
                        "task": task.name,
                        "method": cfg.method.name,
                        "seed": cfg.seed,
                        "run_key": key,
                        "regularizer": cfg.regularizer.name,
                        "normalize": pruner.normalize,
                        "allocation": pruner.allocation,
                        "reconstruction": str(bool(getattr(method, "reconstruction", False))).lower(),
                        **{f"ddp_{k}": v for k, v in distributed.describe().items()},
                        "mlflow.runName": f"{task.name}-{cfg.method.name}-r{target:g}-s{cfg.seed}",
                    },
                )
            if state is None or state["stage"] == "start":
                # Nothing to resume from yet but the MLflow run: a kill during the baseline continues into it.
                state = None
                checkpoint.save({"stage": "start", "mlflow_run_id": tracker.run_id or ""})
            phases = _Phases(
                cfg, task, method, regularizer, pruner, target, device, tracker, checkpoint, say, latency_target
            )
            summary = phases.execute(model, state)
            tracker.flush()  # raises if the store still cannot take what was buffered
        except BaseException as e:
            for _ in range(3):  # a signal landing on this very line must not skip the record (see _record_end)
                try:
                    _record_end(tracker, e)
                    break
                except KeyboardInterrupt:
                    continue
            raise
        tracker.end("FINISHED")
        checkpoint.clear()
        return summary


# What each batch size's latency logs to MLflow (latency/b<N>/<name>): medians, the speed-up's 95%
# interval and quartiles, how many dense/pruned pairs were timed, and whether the machine's other harness
# runs were held meanwhile (others_paused 1/0, others_wait_s: harness/core/gate.py).
_LATENCY_METRICS = (
    *("dense_ms", "pruned_ms", "speedup", "speedup_lo", "speedup_hi", "speedup_q1", "speedup_q3", "pairs"),
    *("others_paused", "others_wait_s"),
)


def _record_end(tracker, e: BaseException) -> None:
    """Mark the run KILLED or FAILED with the reason, even if a signal lands meanwhile: torchrun SIGTERMs
    the survivors of a dead rank just as their next collective fails, and Python runs that signal's
    handler at the first line of the error path (the caller retries). SIGTERM is held back while recording.

    A SIGTERM under data parallelism is a cancelled job (KILLED) only if every rank got it; torchrun also
    sends it to the survivors of a rank that died, and that run FAILED (``distributed.all_ranks_stopping``)."""
    with _sigterm_deferred():
        peer_gone = isinstance(e, Terminated) and not distributed.all_ranks_stopping()
        killed = isinstance(e, (KeyboardInterrupt, SystemExit)) and not peer_gone
        tracker.end("KILLED" if killed else "FAILED", reason=distributed.failure_reason(e, peer_gone=peer_gone))


@contextlib.contextmanager
def _sigterm_deferred():
    """Hold SIGTERM back (it is delivered on exit from the block) where a run records its end."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


class _Phases:
    def __init__(
        self,
        cfg,
        task,
        method,
        regularizer,
        pruner,
        target,
        device,
        tracker,
        checkpoint,
        say,
        latency_target: bool = False,
    ):
        self.cfg, self.task, self.method, self.regularizer = cfg, task, method, regularizer
        self.pruner, self.target, self.device, self.latency_target = pruner, target, device, latency_target
        self.tracker, self.checkpoint, self.say = tracker, checkpoint, say
        self.pruned_checksums = None  # a distributed run: each rank's parameter checksum after pruning (agree())
        self.latency_cost = None  # a latency target's corrected cost (prepare_latency_target)
        self.fit = partial(
            train, step=task.train_step(), device=device, quiet=cfg.quiet, eval_every=int(cfg.measure.eval_every)
        )

    # --- helpers ---------------------------------------------------------------------------
    def loader(self, ds, batch_size, shuffle, seed: int | None = None):
        """A training loader (``shuffle``) gives each rank its shard in a distributed run; evaluation
        loaders give every rank the whole split. Shuffled by ``seed`` (the run's seed by default)."""
        gen = torch.Generator().manual_seed(self.cfg.seed if seed is None else seed)
        sampler = distributed.ShardSampler(ds, gen) if shuffle and distributed.is_distributed() else None
        loader = DataLoader(
            ds,
            batch_size=int(batch_size),
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=gen,
            num_workers=int(self.cfg.data.get("num_workers", 0)),
            collate_fn=self.task.collate(),
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )
        return GatedLoader(loader)  # waits while another harness process on this machine times latency

    def evaluate(self, m) -> dict:
        return self._evaluate(m, self.test_loader)

    def _evaluate(self, m, loader) -> dict:
        # A method may evaluate inside its own training loop (Group Fisher every 10th decision): the model goes
        # back to the mode it was in, or the rest of that epoch would train with BN frozen (a detector's
        # forward would return detections, not losses).
        with eval_mode(m):
            return self.task.evaluate(distributed.sync_buffers(m), loader, self.device)

    def score(self, m) -> float:
        return self.evaluate(m)[self.task.metric]

    def validate(self, m) -> float:
        """The metric on the validation split: what a method may select or search on (never the test set)."""
        if self.val_loader is None:
            raise ConfigError(
                f"method {self.cfg.method.name} needs a validation split; set data.val_fraction (e.g. 0.1)"
            )
        return self._evaluate(m, self.val_loader)[self.task.metric]

    def quick_score(self, m) -> float:
        """The metric on one fixed held-out batch: cheap enough for every pruning step."""
        return self._evaluate(m, [self.held_out])[self.task.metric]

    def log_epochs(self, prefix):
        return lambda epoch, metrics: self.tracker.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, epoch)

    def train_with_regularizer(self, m, seed: int | None = None, **kwargs):
        """Train with the regulariser's layers attached (ANL), and detach them afterwards."""
        hooks = list(kwargs.pop("hooks", []))
        if self.regularizer is not None:
            hooks.append(self.regularizer.attach(m))
        try:
            return self.fit(m, **kwargs, hooks=hooks, seed=self.cfg.seed if seed is None else seed)
        finally:
            if self.regularizer is not None:
                self.regularizer.detach()

    def macs_params(self, m) -> tuple[int, int]:
        return count_macs_params(m, self.task.example_input(1).to(self.device))

    # --- the phases ------------------------------------------------------------------------
    def execute(self, model, state: dict | None) -> dict:
        cfg, task = self.cfg, self.task
        # wall_s sums every attempt of a resumed run (up to each one's last checkpoint), not the last alone
        started = self.started = time.time() - float((state or {}).get("elapsed_s", 0.0))
        self.train_set, val_set, test_set = task.splits()
        self.test_loader = self.loader(test_set, max(cfg.train.batch_size, 256), False)
        self.val_loader = self.loader(val_set, max(cfg.train.batch_size, 256), False) if val_set else None
        if state is None:  # logged once per run, not again on resume
            self.tracker.log_metrics(
                {
                    "data/train_samples": len(self.train_set),
                    "data/test_samples": len(test_set),
                    "data/val_samples": len(val_set) if val_set else 0,
                }
            )
        self.held_out = next(iter(self.test_loader))
        if self.latency_target and (state is None or state["stage"] == "pruning"):
            self.prepare_latency_target(model)

        model, reused, baseline_key = self.baseline(model.to(self.device))
        dense = copy.deepcopy(model).eval()
        if self.latency_cost is not None:  # its corrections compare with the dense model the end compares with
            self.latency_cost.compare_with(dense)
        if state is None or state["stage"] == "pruning":
            model, measures = self.prune(model, reused, baseline_key, state)
        else:
            measures = state["measures"]
            model = model_from_payload(state["model"]).to(self.device)
        model = self.finetune(model, measures, state if state and state["stage"] == "finetune" else None)
        return self.measure(model, dense, measures, started)

    def prepare_latency_target(self, model) -> None:
        """Before any training: the pruner's cost becomes the latency predicted by this device's lookup table
        (harness.latency.target). A target the table says the per-layer minimums cannot reach fails here."""
        cfg, pruner, m = self.cfg, self.pruner, self.cfg.measure
        table, self.latency_cost = latency_target.prepare(
            pruner,
            model,
            self.task.example_input(1).to(self.device),
            self.task.example_input(int(m.target_batch)).to(self.device),
            self.target,
            cfg.results_dir,
            warmup=int(m.warmup),
            min_pairs=int(m.repeats),
            interval=float(m.interval),
            max_seconds=float(m.max_seconds),
            round_to=cfg.prune.get("round_to"),
            say=self.say,
        )
        line = table.line
        self.say(
            f"[latency] table {table.path}: dense {pruner.base_cost:.2f} ms per batch of {table.batch} predicted "
            f"(calibration: {line['models']} models, worst error {line['max_rel_error']:.1%})"
        )
        self.tracker.log_metrics(
            {
                "latency_table/dense_ms_predicted": pruner.base_cost,
                "latency_table/calibration_max_rel_error": line["max_rel_error"],
            }
        )
        self.tracker.set_tags({"latency_table": table.path.name})
        if pruner.max_reduction(model) < self.target:
            raise ConfigError(pruner.unreachable_message(model, self.target))
        self.method.check_target(model, pruner, self.target)  # now on the predicted latency, not the MACs

    def baseline(self, model):
        cfg, task, say = self.cfg, self.task, self.say
        if task.weights_are_baseline and cfg.model.get("weights"):
            say(f"[baseline] model.weights={cfg.model.weights} is the baseline; not training one")
            return model, True, f"weights:{Path(cfg.model.weights).expanduser().resolve()}"

        def train_baseline(m, resume=None, save_partial=None):
            say(f"[baseline] training {cfg.model.name} on {task.name} for {cfg.train.epochs} epochs")
            history = list(resume["history"]) if resume else []
            seed = baseline_cache.baseline_seed(cfg)
            self.train_with_regularizer(
                m,
                seed=seed,
                loader=self.loader(self.train_set, cfg.train.batch_size, True, seed),
                recipe=cfg.train,
                evaluate=self.evaluate,
                desc="train",
                resume=resume["train"] if resume else None,
                on_epoch=lambda e, mt: (history.append(mt), self.log_epochs("baseline")(e, mt)),
                checkpoint=lambda st: save_partial({"train": st, "history": history}),
            )
            return {"history": history, task.metric: history[-1][task.metric] if history else None}

        model, meta, reused = baseline_cache.get_or_train(cfg, model, train_baseline, log=say)
        if getattr(task, "skipped_images", 0):
            say(f"[data] skipped {task.skipped_images} unreadable images (data.skip_bad=true)")
            self.tracker.log_metrics({"data/skipped_images": task.skipped_images})
        if reused:
            say(f"[baseline] reusing {baseline_cache.baseline_dir(cfg)}")
            for epoch, metrics in enumerate(meta.get("history", [])):
                self.log_epochs("baseline")(epoch, metrics)
        return model.to(self.device), reused, meta["key"]

    def prune(self, model, reused: bool, baseline_key: str, state: dict | None) -> tuple[torch.nn.Module, dict]:
        cfg, method, pruner, tracker = self.cfg, self.method, self.pruner, self.tracker
        method_state = state["method"] if state else None
        tracker.set_tags({"baseline_key": baseline_key, "baseline_reused": reused})
        base_acc = self.score(model)
        base_macs, base_params = self.macs_params(model)
        tracker.log_metrics({"prune/macs": base_macs, "prune/acc": self.quick_score(model), "prune/reduction": 0.0}, 0)

        seed_everything(cfg.seed)
        pruner.example_inputs = self.task.example_input(1).to(self.device)
        # Counts the method's own training (ticks, tocks, sparse epochs) to report every epoch it spends.
        train_loader = CountingLoader(
            self.loader(self.train_set, cfg.train.batch_size, True), state.get("train_samples", 0) if state else 0
        )
        ctx = PruneContext(
            pruner=pruner,
            target=self.target,
            device=self.device,
            train_loader=train_loader,
            loss_fn=self.task.loss_fn(),
            step=self.task.train_step(),
            evaluate=self.score,
            quick_evaluate=self.quick_score,
            log_step=lambda step, m: tracker.log_metrics({f"prune/{k}": v for k, v in m.items()}, step),
            log_metrics=tracker.log_metrics,
            train=self.fit,
            finetune_recipe=cfg.finetune,
            train_recipe=cfg.train,
            transfer=bool(getattr(self.task, "transfer", False)),
            val_loader=self.val_loader,
            validate=self.validate,
            latency_batch=(
                self.task.example_input(int(cfg.measure.target_batch)).to(self.device) if self.latency_target else None
            ),
            quiet=bool(cfg.quiet),
            save_state=lambda st: self.checkpoint.save(
                {
                    "stage": "pruning",
                    "method": st,
                    "train_samples": train_loader.samples,
                    "mlflow_run_id": tracker.run_id or "",
                    "elapsed_s": time.time() - self.started,
                }
            ),
            resume_state=method_state,
        )
        if method_state is not None:
            self.say(f"[resume] {method.name}: continuing its pruning schedule from the checkpoint")
        if method.prunes and self.latency_target:
            self.say(
                f"[prune] {method.name}: removing {self.target:.0%} of the latency at batch "
                f"{cfg.measure.target_batch} ({pruner.base_cost:.2f} ms predicted)"
            )
        elif method.prunes:
            self.say(f"[prune] {method.name}: removing {self.target:.0%} of {base_macs / 1e6:.2f} M MACs")
        model = self.agree(method.prune(model, ctx).to(self.device))
        pruned_macs, pruned_params = self.macs_params(model)
        measures = {
            "base_acc": base_acc,
            "base_macs": base_macs,
            "base_params": base_params,
            "pruned_acc": self.score(model),
            "pruned_macs": pruned_macs,
            "baseline_reused": reused,
            "prune_epochs": train_loader.epochs,
        }
        if self.latency_target:
            measures["latency_reduction_predicted"] = pruner.reduction(model)
            measures["latency_corrections"] = list(self.latency_cost.corrections)
            for i, c in enumerate(self.latency_cost.corrections):
                tracker.log_metrics(
                    {"prune/latency_measured": c["measured"], "prune/latency_predicted": c["predicted"]}, i
                )
        tracker.log_metrics(
            {"pruned_acc": measures["pruned_acc"], "pruned_macs": pruned_macs, "prune_epochs": train_loader.epochs}
        )
        self.save_checkpoint("pruned", model, measures)
        return model, measures

    def agree(self, model):
        """In a distributed run: every rank pruned on statistics summed over all ranks, so each should hold
        the same model. Record whether they did (``ddp/ranks_agreed``), then take rank 0's model (structure
        and weights) everywhere and check that every rank now holds it, before fine-tuning."""
        if not distributed.is_distributed():
            return model
        own = distributed.gather(distributed.state_checksum(model, parameters_only=True))
        agreed = len(set(own)) == 1
        if not agreed:
            self.say(f"[ddp] ranks pruned differently (parameter checksums {own}); using rank 0's model")
        payload = distributed.broadcast(
            pruned_payload(model, self.task.model_spec()) if distributed.is_main() else None
        )
        if not distributed.is_main():
            model = model_from_payload(payload).to(self.device)
        final = distributed.gather(distributed.state_checksum(model))
        if len(set(final)) != 1:
            raise RuntimeError(f"ranks hold different pruned models after the broadcast (checksums {final})")
        self.tracker.log_metrics({"ddp/ranks_agreed": float(agreed)})
        self.tracker.set_tags({"ddp_pruned_checksum": final[0]})
        self.pruned_checksums = own
        return model

    def save_checkpoint(self, stage: str, model, measures: dict, train_state: dict | None = None) -> None:
        state = {
            "stage": stage,
            "mlflow_run_id": self.tracker.run_id or "",
            "measures": measures,
            "model": pruned_payload(model, self.task.model_spec()),
            "elapsed_s": time.time() - self.started,
        }
        if train_state is not None:
            state["train"] = train_state
        self.checkpoint.save(state)

    def finetune_epochs(self) -> int:
        return total_epochs(self.cfg.finetune) if self.method.finetunes else 0

    def finetune(self, model, measures: dict, state: dict | None):
        cfg = self.cfg
        if not self.finetune_epochs():
            return model
        resume = state["train"] if state else None
        done = resume["epoch"] + 1 if resume else 0
        self.say(f"[finetune] {self.finetune_epochs()} epochs" + (f", resuming after epoch {done}" if resume else ""))
        seed_everything(cfg.seed)
        self.train_with_regularizer(
            model,
            loader=self.loader(self.train_set, cfg.finetune.batch_size, True),
            recipe=cfg.finetune,
            evaluate=self.evaluate,
            hooks=self.method.finetune_hooks(),
            on_epoch=self.log_epochs("finetune"),
            desc="finetune",
            resume=resume,
            checkpoint=lambda st: self.save_checkpoint("finetune", model, measures, st),
        )
        return model

    def measure(self, model, dense, measures: dict, started: float) -> dict:
        cfg, task, tracker, metric = self.cfg, self.task, self.tracker, self.task.metric
        final = self.evaluate(model)
        final_macs, final_params = self.macs_params(model)
        final_checksums = distributed.gather(distributed.state_checksum(model))
        latency = {}
        if distributed.is_main():  # one process times, the others wait: they would share its cores
            self.say("[measure] latency, dense vs pruned")
            sizes = list(cfg.measure.batch_sizes)
            if self.latency_target and int(cfg.measure.target_batch) not in sizes:
                sizes.append(int(cfg.measure.target_batch))
            scopes = [("", task.example_input, sizes, {})]  # the network alone, at every batch size asked
            if task.has_post_processing:  # a detector: also timed whole, through decoding and NMS
                scopes.append(("e2e_", task.end_to_end_input, list(cfg.measure.batch_sizes), {"scope": "end to end"}))
            for prefix, inputs, batch_sizes, extra in scopes:
                if prefix:
                    self.say("[measure] latency end to end (with post-processing)")
                timed = compare_latency(
                    dense,
                    model,
                    inputs,
                    batch_sizes,
                    self.device,
                    warmup=cfg.measure.warmup,
                    repeats=cfg.measure.repeats,
                    max_seconds=float(cfg.measure.max_seconds),
                    interval=float(cfg.measure.interval),
                )
                latency.update({f"{prefix}{k}": {**v, **extra} for k, v in timed.items()})
        summary = {
            "task": task.name,
            "method": cfg.method.name,
            "seed": int(cfg.seed),
            "target_reduction": self.target,
            "metric": metric,
            "base_acc": measures["base_acc"],
            "pruned_acc": measures["pruned_acc"],
            "final_acc": final[metric],
            "base_macs": measures["base_macs"],
            "pruned_macs": measures["pruned_macs"],
            "final_macs": final_macs,
            "flops_reduction": 1 - final_macs / measures["base_macs"],
            "base_params": measures["base_params"],
            "final_params": final_params,
            "params_reduction": 1 - final_params / measures["base_params"],
            "macs_unit": "MACs (multiply-accumulates), batch 1",
            "latency": latency,
            "latency_unit": "ms per batch (median)",
            "baseline_reused": measures["baseline_reused"],
            "channels": channel_widths(model),
            "wall_s": time.time() - started,
            # Training after the baseline, in passes over the training set: the method's own (ticks,
            # tocks, sparse training) plus the fine-tune. Methods are compared at equal budgets with it.
            "prune_epochs": measures.get("prune_epochs", 0.0),
            "epochs_after_baseline": measures.get("prune_epochs", 0.0) + self.finetune_epochs(),
            "target": "latency" if self.latency_target else "macs",
        }
        if self.latency_target:
            summary.update(self.latency_outcome(latency, measures))
            if distributed.is_main():
                summary["latency_top_layers"] = self.latency_holders(dense, model)
                tracker.set_tags(
                    {
                        "latency_top_layers": ", ".join(
                            f"{h['layer']} {h['share']:.1%}" for h in summary["latency_top_layers"]
                        )
                    }
                )
        logged_at_pruning = ("pruned_acc", "pruned_macs", "prune_epochs")  # each metric is logged once
        flat = {
            k: v
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in logged_at_pruning
        }
        for key, lat in latency.items():
            flat.update(
                {
                    f"latency/{key}/{k}": float(v)
                    for k, v in lat.items()
                    if k in _LATENCY_METRICS and isinstance(v, (int, float))
                }
            )
        tracker.log_metrics(flat)
        if latency:
            tracker.set_tags(
                {"latency_device": next(iter(latency.values()))["device"], "latency_threads": torch.get_num_threads()}
            )
        summary.update(distributed.describe())
        if distributed.is_distributed():
            # Per rank: the model each pruned on its own (before rank 0's was taken), and the final model.
            summary["ddp_pruned_checksums"] = self.pruned_checksums
            summary["ddp_final_checksums"] = final_checksums
        summary["model_artifact"] = self.record(model, summary) if distributed.is_main() else None
        summary["mlflow_run_id"] = tracker.run_id
        distributed.barrier()
        return summary

    def latency_outcome(self, latency: dict, measures: dict) -> dict:
        """Requested, predicted (the table) and measured (paired timing, with its 95% interval) latency
        reduction at measure.target_batch. Other ranks of a distributed run do not time: None there."""
        lat = latency.get(f"b{int(self.cfg.measure.target_batch)}")
        cut = latency_target.reduction_from_speedup
        return {
            "latency_target_batch": int(self.cfg.measure.target_batch),
            "latency_reduction_requested": self.target,
            "latency_reduction_predicted": measures.get("latency_reduction_predicted"),
            # Each time the pruning measured a candidate to correct the table's choice (one-shot rankings)
            "latency_corrections": measures.get("latency_corrections", []),
            "latency_reduction_measured": cut(lat["speedup"]) if lat else None,
            "latency_reduction_measured_lo": cut(lat["speedup_lo"]) if lat else None,
            "latency_reduction_measured_hi": cut(lat["speedup_hi"]) if lat else None,
        }

    def latency_holders(self, dense, model, n: int = 5) -> list[dict]:
        """The ``n`` layers holding most of the pruned model's remaining latency at the target batch, with
        their shares of its whole time (harness.latency.profile; ``python -m harness profile`` has the rest)."""
        from harness.latency.profile import profile_models

        x = self.task.example_input(int(self.cfg.measure.target_batch)).to(self.device)
        passes = max(3, min(int(self.cfg.measure.repeats), 10))
        holders = profile_models(dense, model, x, passes=passes, warmup=1).shares(n)
        self.say(
            "[measure] most of the remaining latency: " + ", ".join(f"{h['layer']} {h['share']:.0%}" for h in holders)
        )
        return holders

    def record(self, model, summary: dict) -> str:
        """Save the pruned model (widths + weights; reload with harness.artifacts.load_pruned)."""
        cfg, task, tracker = self.cfg, self.task, self.tracker
        with tempfile.TemporaryDirectory() as tmp:
            unique = (
                f"{time.strftime('%Y%m%d-%H%M%S')}-{task.name}-{cfg.method.name}-s{cfg.seed}-{uuid.uuid4().hex[:6]}"
            )
            out_dir = Path(tmp) if tracker.run_id else Path(cfg.results_dir) / "runs" / unique
            path = out_dir / "pruned_model.pt"
            save_pruned(model.cpu(), task.model_spec(), path)
            (out_dir / "channels.json").write_text(json.dumps(summary["channels"], indent=1))
            if not tracker.run_id:
                return str(path)
            tracker.log_artifact(path, "model")
            tracker.log_artifact(out_dir / "channels.json", "model")
            return "model/pruned_model.pt"
