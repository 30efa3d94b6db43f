"""Phase 3: the pruned model fine-tuned with the task's ``finetune.*`` recipe, the same budget for every
method (none for a method that does not fine-tune). Checkpoint stage: ``finetune``, after every epoch."""

from __future__ import annotations

from harness.core.train import seed_everything
from harness.phases.state import RunState


def finetune(run: RunState) -> None:
    cfg, model = run.cfg, run.model
    if not run.finetune_epochs():
        return
    resume = run.resume["train"] if run.resumes_at("finetune") else None
    done = resume["epoch"] + 1 if resume else 0
    run.say(f"[finetune] {run.finetune_epochs()} epochs" + (f", resuming after epoch {done}" if resume else ""))
    seed_everything(cfg.seed)
    run.train_with_regularizer(
        model,
        loader=run.loader(run.train_set, cfg.finetune.batch_size, True),
        recipe=cfg.finetune,
        evaluate=run.evaluate,
        hooks=run.method.finetune_hooks(),
        on_epoch=run.log_epochs("finetune"),
        desc="finetune",
        resume=resume,
        checkpoint=lambda st: run.save_checkpoint("finetune", model, st),
    )
