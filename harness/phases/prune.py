"""Phase 2: the method prunes the baseline physically to the target (MACs, or measured latency), counting
every epoch it trains; in a distributed run the ranks' models are made one. Checkpoint stage: ``pruned``."""

from __future__ import annotations

import time

from harness.artifacts import model_from_payload, pruned_payload
from harness.core import distributed
from harness.core.errors import ConfigError
from harness.core.train import CountingLoader, seed_everything
from harness.latency import target as latency_target
from harness.phases.state import RunState
from methods.base import PruneContext, Reporting, TrainingContext


def prepare_latency_target(run: RunState) -> None:
    """Before any training, on the untrained model: the pruner's cost becomes the latency that this device's
    lookup table predicts (harness.latency.target.prepare). A target that the table says the per-layer
    minimums cannot reach, or that the method cannot meet, is refused here (ConfigError)."""
    cfg, pruner, m = run.cfg, run.pruner, run.cfg.measure
    table, run.latency_cost = latency_target.prepare(
        pruner,
        run.model,
        run.task.example_input(1).to(run.device),
        run.task.example_input(int(m.target_batch)).to(run.device),
        run.target,
        cfg.results_dir,
        warmup=int(m.warmup),
        min_pairs=int(m.repeats),
        interval=float(m.interval),
        max_seconds=float(m.max_seconds),
        round_to=cfg.prune.get("round_to"),
        say=run.say,
    )
    line = table.line
    run.say(
        f"[latency] table {table.path}: dense {pruner.base_cost:.2f} ms per batch of {table.batch} predicted "
        f"(calibration: {line['models']} models, worst error {line['max_rel_error']:.1%})"
    )
    run.tracker.log_metrics(
        {
            "latency_table/dense_ms_predicted": pruner.base_cost,
            "latency_table/calibration_max_rel_error": line["max_rel_error"],
        }
    )
    run.tracker.set_tags({"latency_table": table.path.name})
    if pruner.max_reduction(run.model) < run.target:
        raise ConfigError(pruner.unreachable_message(run.model, run.target))
    run.method.check_target(run.model, pruner, run.target)  # now on the predicted latency, not the MACs


def prune(run: RunState) -> None:
    if run.resumes_at("pruned", "finetune"):
        run.measures = run.resume["measures"]
        run.model = model_from_payload(run.resume["model"]).to(run.device)
        return
    cfg, method, pruner, tracker = run.cfg, run.method, run.pruner, run.tracker
    tracker.set_tags({"baseline_key": run.baseline_key, "baseline_reused": run.baseline_reused})
    model = run.model
    base_acc = run.score(model)
    base_macs, base_params = run.macs_params(model)
    tracker.log_metrics({"prune/macs": base_macs, "prune/acc": run.quick_score(model), "prune/reduction": 0.0}, 0)

    seed_everything(cfg.seed)
    pruner.example_inputs = run.task.example_input(1).to(run.device)
    # Counts the method's own training (ticks, tocks, sparse epochs) to report every epoch it spends.
    train_loader = CountingLoader(
        run.loader(run.train_set, cfg.train.batch_size, True), run.resume.get("train_samples", 0) if run.resume else 0
    )
    ctx = _context(run, train_loader)
    _announce(run, base_macs, resumed=ctx.resume_state is not None)
    model = agree(run, method.prune(model, ctx).to(run.device))
    pruned_macs, _ = run.macs_params(model)
    run.measures = {
        "base_acc": base_acc,
        "base_macs": base_macs,
        "base_params": base_params,
        "pruned_acc": run.score(model),
        "pruned_macs": pruned_macs,
        "baseline_reused": run.baseline_reused,
        "prune_epochs": train_loader.epochs,
    }
    if run.latency_target:
        run.measures["latency_reduction_predicted"] = pruner.reduction(model)
        run.measures["latency_corrections"] = list(run.latency_cost.corrections)
        for i, c in enumerate(run.latency_cost.corrections):
            tracker.log_metrics({"prune/latency_measured": c["measured"], "prune/latency_predicted": c["predicted"]}, i)
    tracker.log_metrics(
        {"pruned_acc": run.measures["pruned_acc"], "pruned_macs": pruned_macs, "prune_epochs": train_loader.epochs}
    )
    run.model = model
    run.save_checkpoint("pruned", model)


def _context(run: RunState, train_loader: CountingLoader) -> PruneContext:
    """What the method may use: the pruner, the training data and recipes, the validation split, and the logs
    (the test split only behind them)."""
    cfg, tracker = run.cfg, run.tracker
    return PruneContext(
        pruner=run.pruner,
        target=run.target,
        device=run.device,
        training=TrainingContext(
            loader=train_loader,
            loss_fn=run.task.loss_fn(),
            step=run.task.train_step(),
            train=run.fit,
            finetune_recipe=cfg.finetune,
            train_recipe=cfg.train,
            transfer=bool(getattr(run.task, "transfer", False)),
        ),
        report=Reporting(
            log_step=lambda step, m: tracker.log_metrics({f"prune/{k}": v for k, v in m.items()}, step),
            log_metrics=tracker.log_metrics,
            quick_test_metric=run.quick_score,
        ),
        val_loader=run.val_loader,
        validate=run.validate,
        latency_batch=(
            run.task.example_input(int(cfg.measure.target_batch)).to(run.device) if run.latency_target else None
        ),
        quiet=bool(cfg.quiet),
        save_state=lambda st: run.checkpoint.save(
            {
                "stage": "pruning",
                "method": st,
                "train_samples": train_loader.samples,
                "mlflow_run_id": tracker.run_id or "",
                "elapsed_s": time.time() - run.started,
            }
        ),
        resume_state=run.resume["method"] if run.resume else None,
    )


def _announce(run: RunState, base_macs: int, resumed: bool) -> None:
    method, cfg = run.method, run.cfg
    if resumed:
        run.say(f"[resume] {method.name}: continuing its pruning schedule from the checkpoint")
    if method.prunes and run.latency_target:
        run.say(
            f"[prune] {method.name}: removing {run.target:.0%} of the latency at batch "
            f"{cfg.measure.target_batch} ({run.pruner.base_cost:.2f} ms predicted)"
        )
    elif method.prunes:
        run.say(f"[prune] {method.name}: removing {run.target:.0%} of {base_macs / 1e6:.2f} M MACs")


def agree(run: RunState, model):
    """In a distributed run: every rank pruned on statistics summed over all ranks, so each should hold
    the same model. Record whether they did (``ddp/ranks_agreed``), then take rank 0's model (structure
    and weights) everywhere and check that every rank now holds it, before fine-tuning."""
    if not distributed.is_distributed():
        return model
    own = distributed.gather(distributed.state_checksum(model, parameters_only=True))
    agreed = len(set(own)) == 1
    if not agreed:
        run.say(f"[ddp] ranks pruned differently (parameter checksums {own}); using rank 0's model")
    payload = distributed.broadcast(pruned_payload(model, run.task.model_spec()) if distributed.is_main() else None)
    if not distributed.is_main():
        model = model_from_payload(payload).to(run.device)
    final = distributed.gather(distributed.state_checksum(model))
    if len(set(final)) != 1:
        raise RuntimeError(f"ranks hold different pruned models after the broadcast (checksums {final})")
    run.tracker.log_metrics({"ddp/ranks_agreed": float(agreed)})
    run.tracker.set_tags({"ddp_pruned_checksum": final[0]})
    run.pruned_checksums = own
    return model
