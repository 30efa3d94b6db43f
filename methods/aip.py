"""AIP, adversarial iterative pruning with knowledge transfer: a RECONSTRUCTION.

There is no public code; only the abstract describes it (shared/reference/papers.md). What is built
here, and which choices are ours:

- Iterative: ``steps`` rounds, each cutting MACs to the next of ``steps`` evenly spaced targets
  (target·k/steps), then a short recovery of ``recover_epochs``; the last round ends at the target,
  then the common fine-tune follows.
- The criterion (the abstract names none) is the L1 norm of each channel's filters, ranked globally
  (the ``l1`` method's criterion). Our reason: it is data-free and cheap at every round, and it makes
  ``aip`` vs ``l1`` a clean test of what AIP adds, the iterative schedule and the adversarial
  knowledge-transfer recovery.
- Recovery (the student is the network being pruned, the teacher the dense baseline): attention
  transfer at every stage output (``at_weight``), KD on the logits (``kd_weight``, ``temperature``)
  and the adversarial loss against GAL's MLP discriminator on logits (``adv_weight``). Cross-entropy
  on labels is off by default (``ce_weight: 0``): the abstract lists transfer terms only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.hooks import FeatureTap
from harness.core.settings import setting
from harness.core.surgery import eval_mode
from methods.base import Method, PruneContext, register_method
from methods.l1 import FilterL1Importance
from methods.teacher import TeacherStudent, attention_loss, distill_epoch, kd_loss, stage_outputs


@dataclass
class AipSettings:
    steps: int = setting(
        5, "int", "[1, 100000]", help="pruning rounds, each to the next of 5 evenly spaced MACs targets"
    )
    recover_epochs: int = setting(
        1,
        "int",
        "[0, 100000]",
        help="recovery epochs after each round (so steps x recover_epochs before the common fine-tune)",
    )
    lr: float = setting(
        0.01, "real", "(0, 100]", help="SGD for the student and the discriminator, constant during recovery"
    )
    momentum: float = setting(0.9, "real", "[0, 1)", help="SGD momentum of the student and the discriminator")
    weight_decay: float = setting(0.0005, "real", "[0, 1]", help="weight decay of the student and the discriminator")
    at_weight: float = setting(
        1000.0, "real", "[0, 1000000]", help="attention transfer at every stage output (Zagoruyko & Komodakis use 1e3)"
    )
    kd_weight: float = setting(1.0, "real", "[0, 1000]", help="KD on logits")
    temperature: float = setting(4.0, "real", "(0, 1000]", help="softmax temperature of the KD term")
    adv_weight: float = setting(1.0, "real", "[0, 1000]", help="fool the discriminator (GAL's MLP on logits)")
    ce_weight: float = setting(
        0.0, "real", "[0, 1000]", help="cross-entropy on labels; off: the abstract names transfer terms only"
    )


@register_method
class AIP(Method):
    name = "aip"
    reconstruction = True
    description = "AIP, RECONSTRUCTED from the abstract (no public code): iterative L1 pruning, each round recovered by attention transfer + KD + a discriminator against the dense teacher"
    needs_scores = True
    settings = AipSettings

    def importance(self):
        return FilterL1Importance()

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        settings, pruner = self.settings, ctx.pruner
        example = pruner.example_inputs
        layers = stage_outputs(model, example)
        with eval_mode(model), torch.no_grad():
            num_outputs = model(example).shape[1]
        ts = TeacherStudent(
            model, num_outputs, settings.lr, settings.momentum, settings.weight_decay, attention_layers=layers
        )
        tap = FeatureTap(model, layers)
        ctx.report.metrics({"aip/attention_layers": len(layers)}, 0)
        student_loss = self._student_loss(tap, ts, ctx.training.loss_fn)
        epoch, first = self._resume(model, ts, ctx) if ctx.resume_state is not None else (0, 1)
        try:
            for step in range(first, int(settings.steps) + 1):
                goal = ctx.target * step / int(settings.steps)
                pruner.prune_to_target(model, self.importance(), goal)
                reduction = pruner.reduction(model)
                ctx.report.step(step, {}, model, name="acc_after_prune")
                # A fresh optimiser each round: the pruned weights are new tensors.
                opt = torch.optim.SGD(
                    model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
                )
                metrics = {}
                for e in range(int(settings.recover_epochs)):
                    metrics = distill_epoch(
                        model,
                        ts,
                        ctx.training.loader,
                        opt,
                        student_loss,
                        device=ctx.device,
                        desc=f"aip round {step}/{settings.steps} epoch {e + 1}/{settings.recover_epochs}",
                        quiet=ctx.quiet,
                    )
                    ctx.report.metrics({f"aip/{k}": v for k, v in metrics.items()}, epoch)
                    epoch += 1
                ctx.report.step(
                    step,
                    {**pruner.cost_metrics(reduction), **({"d_acc": metrics["d_acc"]} if metrics else {})},
                    model,
                )
                ctx.save_state(
                    {
                        "round": step,
                        "epoch": epoch,
                        "widths": pruner.group_widths(model),
                        "model": copy.deepcopy(model.state_dict()),
                        "discriminator": copy.deepcopy(ts.discriminator.state_dict()),
                        "d_optimizer": copy.deepcopy(ts.optimizer.state_dict()),
                        **ctx.rng_state(),
                    }
                )
        finally:
            tap.remove()
            ts.close()
        return model

    def _student_loss(self, tap: FeatureTap, ts: TeacherStudent, loss_fn: nn.Module):
        """The student's loss terms in a recovery round: attention transfer, KD, the adversarial term (and
        cross-entropy on the labels when ``ce_weight`` is set), each weighted by its setting."""
        settings = self.settings

        def student_loss(labels, student, teacher):
            terms = {
                "at": settings.at_weight * attention_loss(tap.features(), ts.teacher_tap.features()),
                "kd": settings.kd_weight * kd_loss(student, teacher, settings.temperature),
                "adv": settings.adv_weight * ts.adversarial_loss(student),
            }
            if settings.ce_weight:
                terms["ce"] = settings.ce_weight * loss_fn(student, labels)
            return terms

        return student_loss

    def _resume(self, model: nn.Module, ts: TeacherStudent, ctx: PruneContext) -> tuple[int, int]:
        """Rebuild the pruned shapes, then load what the last round left; returns (epoch, first round)."""
        state = ctx.resume_state
        ctx.pruner.shrink_to(model, state["widths"])
        model.load_state_dict(state["model"])
        ts.discriminator.load_state_dict(state["discriminator"])
        ts.optimizer.load_state_dict(state["d_optimizer"])
        ctx.restore_rng(state)
        return int(state["epoch"]), int(state["round"]) + 1
