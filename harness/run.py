"""The one run loop: baseline -> prune -> fine-tune -> measure -> record.

Each phase re-seeds from ``cfg.seed``, so a run gives the same result whether its baseline was
trained now or loaded from the cache.
"""
from __future__ import annotations

import copy
import json
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
from harness.artifacts import save_pruned
from harness.errors import ConfigError
from harness.measure import compare_latency, count_macs_params
from harness.surgery import ChannelPruner, channel_widths
from harness.tracking import flatten, make_tracker
from harness.train import train
from methods import PruneContext, create_method, create_regularizer
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
    device = resolve_device(cfg.device)
    try:
        task, method, regularizer = create_task(cfg), create_method(cfg), create_regularizer(cfg)
    except KeyError as e:
        raise ConfigError(str(e).strip("'\"")) from None
    say = Reporter(cfg.quiet)
    target = float(cfg.prune.flops_reduction) if method.prunes else 0.0

    # Cheap checks before any data is read or any training starts.
    seed_everything(cfg.seed)
    model = task.build_model()
    example = task.example_input(1)
    pruner = ChannelPruner(model, example, task.output_layers(model), cfg.prune.min_channels_ratio)
    if target > 0 and pruner.max_reduction(model) < target:
        raise ConfigError(pruner.unreachable_message(model, target))

    tracker = make_tracker(cfg)
    tracker.start(flatten(cfg), tags={"task": task.name, "method": method.name, "seed": cfg.seed,
                                      "regularizer": cfg.regularizer.name,
                                      "mlflow.runName": f"{task.name}-{method.name}-r{target:g}-s{cfg.seed}"})
    try:
        summary = _run_phases(cfg, task, method, regularizer, model, pruner, target, device, tracker, say)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        tracker.end(status, reason=f"{type(e).__name__}: {e}")
        raise
    tracker.end("FINISHED")
    return summary


def _run_phases(cfg, task, method, regularizer, model, pruner, target, device, tracker, say) -> dict:
    started = time.time()
    train_set, test_set = task.datasets()
    workers = int(cfg.data.get("num_workers", 0))

    def loader(ds, batch_size, shuffle):
        gen = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(ds, batch_size=int(batch_size), shuffle=shuffle, generator=gen, num_workers=workers,
                          pin_memory=device.type == "cuda", drop_last=False)

    test_loader = loader(test_set, max(cfg.train.batch_size, 256), False)
    metric = task.metric

    def evaluate(m) -> dict:
        return task.evaluate(m, test_loader, device)

    def score(m) -> float:
        return evaluate(m)[metric]

    held_out = next(iter(test_loader))

    def quick_score(m) -> float:
        return task.evaluate(m, [held_out], device)[metric]

    loss_fn = task.loss_fn()
    fit = partial(train, loss_fn=loss_fn, device=device, quiet=cfg.quiet)

    def with_regularizer(m, **kwargs):
        """Train with the regulariser's layers attached (ANL), and detach them afterwards."""
        hooks = list(kwargs.pop("hooks", []))
        if regularizer is not None:
            hooks.append(regularizer.attach(m))
        try:
            return fit(m, **kwargs, hooks=hooks)
        finally:
            if regularizer is not None:
                regularizer.detach()

    def log_epochs(prefix):
        return lambda epoch, metrics: tracker.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, epoch)

    # 1. Baseline: trained once per task + seed + recipe, shared by every method.
    model = model.to(device)

    def train_baseline(m):
        say(f"[baseline] training {cfg.model.name} on {task.name} for {cfg.train.epochs} epochs")
        seed_everything(cfg.seed)
        history = []
        with_regularizer(m, loader=loader(train_set, cfg.train.batch_size, True), recipe=cfg.train,
                         evaluate=evaluate, desc="train",
                         on_epoch=lambda e, mt: (history.append(mt), log_epochs("baseline")(e, mt)))
        return {"history": history, metric: history[-1][metric] if history else None}

    if task.weights_are_baseline and cfg.model.get("weights"):
        say(f"[baseline] model.weights={cfg.model.weights} is the baseline; not training one")
        meta, reused = {"key": f"weights:{Path(cfg.model.weights).expanduser().resolve()}"}, True
    else:
        model, meta, reused = baseline_cache.get_or_train(cfg, model, train_baseline, log=say)
    if getattr(task, "skipped_images", 0):
        say(f"[data] skipped {task.skipped_images} unreadable images (data.skip_bad=true)")
        tracker.log_metrics({"data/skipped_images": task.skipped_images})
    if reused:
        say(f"[baseline] reusing {baseline_cache.baseline_dir(cfg)}")
        for epoch, metrics in enumerate(meta.get("history", [])):
            log_epochs("baseline")(epoch, metrics)
    tracker.set_tags({"baseline_key": meta["key"], "baseline_reused": reused})
    model = model.to(device)
    base_acc = score(model)
    base_macs, base_params = count_macs_params(model, task.example_input(1).to(device))
    dense = copy.deepcopy(model).eval()
    tracker.log_metrics({"prune/macs": base_macs, "prune/acc": quick_score(model), "prune/reduction": 0.0}, 0)

    # 2. Prune, physically, to the MACs target.
    seed_everything(cfg.seed)
    pruner.example_inputs = task.example_input(1).to(device)

    def log_step(step: int, metrics: dict) -> None:
        tracker.log_metrics({f"prune/{k}": v for k, v in metrics.items()}, step)

    ctx = PruneContext(pruner=pruner, target=target, device=device,
                       train_loader=loader(train_set, cfg.train.batch_size, True), loss_fn=loss_fn,
                       evaluate=score, quick_evaluate=quick_score, log_step=log_step,
                       log_metrics=tracker.log_metrics, train=fit, finetune_recipe=cfg.finetune)
    if method.prunes:
        say(f"[prune] {method.name}: removing {target:.0%} of {base_macs / 1e6:.2f} M MACs")
    model = method.prune(model, ctx).to(device)
    pruned_acc = score(model)
    pruned_macs, pruned_params = count_macs_params(model, task.example_input(1).to(device))
    tracker.log_metrics({"pruned_acc": pruned_acc, "pruned_macs": pruned_macs})

    # 3. Fine-tune, with the same budget for every method.
    if method.finetunes and cfg.finetune.epochs:
        say(f"[finetune] {cfg.finetune.epochs} epochs")
        seed_everything(cfg.seed)
        with_regularizer(model, loader=loader(train_set, cfg.finetune.batch_size, True),
                         recipe=cfg.finetune, evaluate=evaluate, hooks=method.finetune_hooks(),
                         on_epoch=log_epochs("finetune"), desc="finetune")

    # 4. Measure.
    final = evaluate(model)
    final_macs, final_params = count_macs_params(model, task.example_input(1).to(device))
    say("[measure] latency, dense vs pruned")
    latency = compare_latency(dense, model, task.example_input, cfg.measure.batch_sizes, device,
                              warmup=cfg.measure.warmup, repeats=cfg.measure.repeats)

    summary = {
        "task": task.name, "method": method.name, "seed": int(cfg.seed), "target_reduction": target,
        "metric": metric, "base_acc": base_acc, "pruned_acc": pruned_acc, "final_acc": final[metric],
        "base_macs": base_macs, "pruned_macs": pruned_macs, "final_macs": final_macs,
        "flops_reduction": 1 - final_macs / base_macs, "base_params": base_params, "final_params": final_params,
        "params_reduction": 1 - final_params / base_params, "macs_unit": "MACs (multiply-accumulates), batch 1",
        "latency": latency, "latency_unit": "ms per batch (median)", "baseline_reused": reused,
        "channels": channel_widths(model), "wall_s": time.time() - started,
    }
    flat = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key, lat in latency.items():
        flat.update({f"latency/{key}/{k}": v for k, v in lat.items() if k in ("dense_ms", "pruned_ms", "speedup")})
    tracker.log_metrics(flat)
    tracker.set_tags({"latency_device": next(iter(latency.values()))["device"],
                      "latency_threads": torch.get_num_threads()})

    # 5. Record the pruned model (architecture widths + weights; reload with harness.load_pruned).
    with tempfile.TemporaryDirectory() as tmp:
        unique = f"{time.strftime('%Y%m%d-%H%M%S')}-{task.name}-{method.name}-s{cfg.seed}-{uuid.uuid4().hex[:6]}"
        out_dir = Path(tmp) if tracker.run_id else Path(cfg.results_dir) / "runs" / unique
        path = out_dir / "pruned_model.pt"
        save_pruned(model.cpu(), task.model_spec(), path)
        (out_dir / "channels.json").write_text(json.dumps(summary["channels"], indent=1))
        if tracker.run_id:
            tracker.log_artifact(path, "model")
            tracker.log_artifact(out_dir / "channels.json", "model")
            summary["model_artifact"] = "model/pruned_model.pt"
        else:
            summary["model_artifact"] = str(path)
    summary["mlflow_run_id"] = tracker.run_id
    return summary
