"""Phase 4: the final model's test metric, MACs and params, and its latency against the dense baseline,
timed in alternating pairs at each of ``measure.batch_sizes`` (rank 0 alone in a distributed run)."""

from __future__ import annotations

import time

import torch

from harness.core import distributed
from harness.core.surgery import channel_widths
from harness.latency import target as latency_target
from harness.latency.measure import compare_latency
from harness.phases.state import RunState

# What each batch size's latency logs to MLflow (latency/b<N>/<name>): medians, the speed-up's 95%
# interval and quartiles, how many dense/pruned pairs were timed, and whether the machine's other harness
# runs were held meanwhile (others_paused 1/0, others_wait_s: harness/core/gate.py).
_LATENCY_METRICS = (
    *("dense_ms", "pruned_ms", "speedup", "speedup_lo", "speedup_hi", "speedup_q1", "speedup_q3", "pairs"),
    *("others_paused", "others_wait_s"),
)
_LOGGED_AT_PRUNING = ("pruned_acc", "pruned_macs", "prune_epochs")  # each metric is logged once


def measure(run: RunState) -> None:
    model = run.model
    final = run.evaluate(model)
    final_macs, final_params = run.macs_params(model)
    final_checksums = distributed.gather(distributed.state_checksum(model))
    latency = time_latency(run) if distributed.is_main() else {}  # one process times: the others share its cores
    run.summary = summary = _summary(run, final[run.task.metric], final_macs, final_params, latency)
    if run.latency_target:
        summary.update(latency_outcome(run, latency))
        if distributed.is_main():
            summary["latency_top_layers"] = latency_holders(run)
            run.tracker.set_tags(
                {
                    "latency_top_layers": ", ".join(
                        f"{h['layer']} {h['share']:.1%}" for h in summary["latency_top_layers"]
                    )
                }
            )
    _log(run, summary, latency)
    summary.update(distributed.describe())
    if distributed.is_distributed():
        # Per rank: the model each pruned on its own (before rank 0's was taken), and the final model.
        summary["ddp_pruned_checksums"] = run.pruned_checksums
        summary["ddp_final_checksums"] = final_checksums


def time_latency(run: RunState) -> dict:
    """{"b<N>" (and "e2e_b<N>" for a detector, through decoding and NMS): paired dense/pruned timing}."""
    cfg, task = run.cfg, run.task
    run.say("[measure] latency, dense vs pruned")
    sizes = list(cfg.measure.batch_sizes)
    if run.latency_target and int(cfg.measure.target_batch) not in sizes:
        sizes.append(int(cfg.measure.target_batch))
    scopes = [("", task.example_input, sizes, {})]  # the network alone, at every batch size asked
    if task.has_post_processing:  # a detector: also timed whole, through decoding and NMS
        scopes.append(("e2e_", task.end_to_end_input, list(cfg.measure.batch_sizes), {"scope": "end to end"}))
    latency = {}
    for prefix, inputs, batch_sizes, extra in scopes:
        if prefix:
            run.say("[measure] latency end to end (with post-processing)")
        timed = compare_latency(
            run.dense,
            run.model,
            inputs,
            batch_sizes,
            run.device,
            warmup=cfg.measure.warmup,
            repeats=cfg.measure.repeats,
            max_seconds=float(cfg.measure.max_seconds),
            interval=float(cfg.measure.interval),
        )
        latency.update({f"{prefix}{k}": {**v, **extra} for k, v in timed.items()})
    return latency


def _summary(run: RunState, final_metric: float, final_macs: int, final_params: int, latency: dict) -> dict:
    cfg, measures = run.cfg, run.measures
    return {
        "task": run.task.name,
        "method": cfg.method.name,
        "seed": int(cfg.seed),
        "target_reduction": run.target,
        "metric": run.task.metric,
        "base_acc": measures["base_acc"],
        "pruned_acc": measures["pruned_acc"],
        "final_acc": final_metric,
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
        "channels": channel_widths(run.model),
        "wall_s": time.time() - run.started,
        # Training after the baseline, in passes over the training set: the method's own (ticks,
        # tocks, sparse training) plus the fine-tune. Methods are compared at equal budgets with it.
        "prune_epochs": measures.get("prune_epochs", 0.0),
        "epochs_after_baseline": measures.get("prune_epochs", 0.0) + run.finetune_epochs(),
        "target": "latency" if run.latency_target else "macs",
    }


def _log(run: RunState, summary: dict, latency: dict) -> None:
    flat = {
        k: v
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _LOGGED_AT_PRUNING
    }
    for key, lat in latency.items():
        flat.update(
            {
                f"latency/{key}/{k}": float(v)
                for k, v in lat.items()
                if k in _LATENCY_METRICS and isinstance(v, (int, float))
            }
        )
    run.tracker.log_metrics(flat)
    if latency:
        run.tracker.set_tags(
            {"latency_device": next(iter(latency.values()))["device"], "latency_threads": torch.get_num_threads()}
        )


def latency_outcome(run: RunState, latency: dict) -> dict:
    """Requested, predicted (the table) and measured (paired timing, with its 95% interval) latency
    reduction at measure.target_batch. Other ranks of a distributed run do not time: None there."""
    lat = latency.get(f"b{int(run.cfg.measure.target_batch)}")
    cut = latency_target.reduction_from_speedup
    return {
        "latency_target_batch": int(run.cfg.measure.target_batch),
        "latency_reduction_requested": run.target,
        "latency_reduction_predicted": run.measures.get("latency_reduction_predicted"),
        # Each time the pruning measured a candidate to correct the table's choice (one-shot rankings)
        "latency_corrections": run.measures.get("latency_corrections", []),
        "latency_reduction_measured": cut(lat["speedup"]) if lat else None,
        "latency_reduction_measured_lo": cut(lat["speedup_lo"]) if lat else None,
        "latency_reduction_measured_hi": cut(lat["speedup_hi"]) if lat else None,
    }


def latency_holders(run: RunState, n: int = 5) -> list[dict]:
    """The ``n`` layers holding most of the pruned model's remaining latency at the target batch, with
    their shares of its whole time (harness.latency.profile; ``python -m harness profile`` has the rest)."""
    from harness.latency.profile import profile_models

    x = run.task.example_input(int(run.cfg.measure.target_batch)).to(run.device)
    passes = max(3, min(int(run.cfg.measure.repeats), 10))
    holders = profile_models(run.dense, run.model, x, passes=passes, warmup=1).shares(n)
    run.say("[measure] most of the remaining latency: " + ", ".join(f"{h['layer']} {h['share']:.0%}" for h in holders))
    return holders
