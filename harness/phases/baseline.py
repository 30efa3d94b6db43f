"""Phase 1: the shared baseline, trained once per task + model + data + recipe + seed and cached
(harness/baseline.py), or the task's given weights. It becomes the dense reference of every comparison."""

from __future__ import annotations

import copy
from pathlib import Path

from harness import baseline as baseline_cache
from harness.phases.state import RunState


def baseline(run: RunState) -> None:
    cfg, task, say = run.cfg, run.task, run.say
    run.model = run.model.to(run.device)
    if task.weights_are_baseline and cfg.model.get("weights"):
        say(f"[baseline] model.weights={cfg.model.weights} is the baseline; not training one")
        run.baseline_reused, run.baseline_key = True, f"weights:{Path(cfg.model.weights).expanduser().resolve()}"
    else:
        model, meta, run.baseline_reused = baseline_cache.get_or_train(
            cfg, run.model, lambda m, **kw: _train(run, m, **kw), log=say
        )
        run.model, run.baseline_key = model.to(run.device), meta["key"]
        if getattr(task, "skipped_images", 0):
            say(f"[data] skipped {task.skipped_images} unreadable images (data.skip_bad=true)")
            run.tracker.log_metrics({"data/skipped_images": task.skipped_images})
        if run.baseline_reused:
            say(f"[baseline] reusing {baseline_cache.baseline_dir(cfg)}")
            for epoch, metrics in enumerate(meta.get("history", [])):
                run.log_epochs("baseline")(epoch, metrics)
    run.dense = copy.deepcopy(run.model).eval()
    if run.latency_cost is not None:  # its corrections compare with the dense model the end compares with
        run.latency_cost.compare_with(run.dense)


def _train(run: RunState, m, resume=None, save_partial=None) -> dict:
    cfg, task = run.cfg, run.task
    run.say(f"[baseline] training {cfg.model.name} on {task.name} for {cfg.train.epochs} epochs")
    history = list(resume["history"]) if resume else []
    seed = baseline_cache.baseline_seed(cfg)
    run.train_with_regularizer(
        m,
        seed=seed,
        loader=run.loader(run.train_set, cfg.train.batch_size, True, seed),
        recipe=cfg.train,
        evaluate=run.evaluate,
        desc="train",
        resume=resume["train"] if resume else None,
        on_epoch=lambda e, mt: (history.append(mt), run.log_epochs("baseline")(e, mt)),
        checkpoint=lambda st: save_partial({"train": st, "history": history}),
    )
    return {"history": history, task.metric: history[-1][task.metric] if history else None}
