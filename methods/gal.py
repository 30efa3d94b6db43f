"""GAL (Lin et al., CVPR'19): soft masks learned label-free against the dense teacher, as the authors'
code (ShaohuiLin/GAL main.py, fista.py) does it.

A soft mask scales each prunable structure's output: one scalar per residual block (the block's
residual branch, so a zero mask leaves the block equal to its shortcut), or one per channel group
(plain nets). The student (the baseline with masks, masks drawn from N(0, 1)) learns μ·MSE to the
teacher's logits plus the adversarial loss against an MLP discriminator; labels are never read. The
mask L1 (λ) enters twice, as the authors do: its sub-gradient in the student's loss, and a FISTA
proximal step (soft threshold lr·λ, then clamped at 0) every ``mask_step`` batches. The epoch with
the best accuracy on the validation split is kept (the authors choose on the test set; we do not).

Then structures are removed physically (a block becomes its shortcut) and the masks of what stays are
folded into its BatchNorm (or conv) affine. The authors remove every structure with mask <= 0; the
harness's contract is the FLOPs target, so removal goes in ascending mask order and stops at the
target: if the zero masks are not enough, the smallest positive masks go next; if they are more than
enough, those pushed furthest below zero by the last proximal step go first. Both the natural
reduction (all masks <= 0) and the final one are logged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.hooks import HookSet, channel_scaler
from harness.core.settings import setting
from harness.core.surgery import ChannelPruner, ShortcutOnly, eval_mode, replace_module
from methods.base import Method, PruneContext, register_method
from methods.teacher import TeacherStudent, distill_epoch, probe

# The authors' CIFAR-10 epoch: 50,000 images at batch 128. mask_step is scaled to shorter epochs so the
# number of FISTA steps per epoch stays theirs.
AUTHORS_BATCHES_PER_EPOCH = 391
_SHORTCUT_NAMES = ("shortcut", "downsample")


class Block:
    """A residual block found in a model: where its mask goes (the branch's last norm) and what replaces it."""

    def __init__(self, name: str, branch_end: str, shortcut_name: str | None, relu: bool):
        self.name, self.branch_end, self.shortcut_name, self.relu = name, branch_end, shortcut_name, relu


def residual_blocks(model: nn.Module, example: torch.Tensor) -> list[Block]:
    """Every module that behaves as ``act(branch(x) + shortcut(x))``, found by testing, not by class name:
    with the output of its last BatchNorm outside the shortcut zeroed, its output must equal its
    shortcut's (with or without a ReLU) on the input it sees in a forward pass of ``example``."""
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(module, args):  # returns None: a pre-hook's return value would replace the input
            inputs.setdefault(name, args[0] if args else None)

        return hook

    probe(model, example, lambda name, m: m.register_forward_pre_hook(keep_input(name)))
    blocks = []
    for name, module in model.named_modules():
        if name not in inputs or not isinstance(inputs[name], torch.Tensor):
            continue
        shortcut_name = next((s for s in _SHORTCUT_NAMES if isinstance(getattr(module, s, None), nn.Module)), None)
        outside = lambda n: n and not (shortcut_name and (n + ".").startswith(shortcut_name + "."))  # noqa: E731
        norms = [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and outside(n)]
        convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and outside(n)]
        if not norms or not convs:
            continue
        branch_end = norms[-1]
        x = inputs[name]
        with eval_mode(model), torch.no_grad():
            handle = module.get_submodule(branch_end).register_forward_hook(lambda m, i, out: out * 0)
            try:
                zeroed = module(x)
            finally:
                handle.remove()
            if not isinstance(zeroed, torch.Tensor):
                continue
            for relu in (True, False):
                replacement = ShortcutOnly(module, shortcut_name, relu)
                with eval_mode(replacement):
                    same = replacement(x)
                scale = float(x.abs().max()) if x.numel() else 0.0
                if (
                    scale > 0
                    and same.shape == zeroed.shape
                    and torch.allclose(same, zeroed, rtol=1e-4, atol=1e-6 * scale)
                ):
                    blocks.append(Block(name, f"{name}.{branch_end}", shortcut_name, relu))
                    break
    # A stage (a container of blocks) can pass too when its blocks are identities (zero-initialised last
    # BNs): keep the innermost, the blocks themselves.
    return [b for b in blocks if not any(o.name.startswith(b.name + ".") for o in blocks)]


class SoftMasks:
    """One learnable mask per structure, applied by forward hooks: per block a scalar on the branch's
    last norm; per channel group a vector on its norms (or, without BN, on its convs' outputs)."""

    def __init__(
        self,
        model: nn.Module,
        structure: str,
        blocks: list[Block],
        pruner: ChannelPruner,
        init: str,
        generator: torch.Generator,
    ):
        self.model, self.structure = model, structure
        device = next(model.parameters()).device
        draw = lambda n: (torch.randn(n, generator=generator) if init == "normal" else torch.ones(n)).to(device)  # noqa: E731
        if structure == "block":
            self.blocks = {b.name: b for b in blocks}
            self.sites = {b.name: [b.branch_end] for b in blocks}
            self.masks = {b.name: nn.Parameter(draw(1)) for b in blocks}
        else:
            groups = pruner.groups(model)
            self.sites = {k: g.norms or g.members for k, g in groups.items()}
            self.masks = {k: nn.Parameter(draw(g.channels)) for k, g in groups.items()}
        self.hooks = HookSet(
            model,
            [
                (site, channel_scaler(lambda key=key: self.masks[key]))
                for key, sites in self.sites.items()
                for site in sites
            ],
        )

    def parameters(self) -> list[nn.Parameter]:
        return list(self.masks.values())

    def l1(self) -> torch.Tensor:
        return sum(m.abs().sum() for m in self.masks.values())

    def flat(self) -> torch.Tensor:
        return torch.cat([m.detach().flatten() for m in self.masks.values()])

    def remove_hooks(self) -> None:
        self.hooks.remove()

    @torch.no_grad()
    def fold(self) -> None:
        """Multiply each mask into the affine of the layer it scales: the network then computes what the
        masked one did, with vanilla layers only."""
        for key, sites in self.sites.items():
            m = self.masks[key].detach()
            for site in sites:
                layer = self.model.get_submodule(site)
                shape = (-1,) + (1,) * (layer.weight.dim() - 1)
                layer.weight.mul_(m.view(shape) if m.numel() > 1 else m)
                if layer.bias is not None:
                    layer.bias.mul_(m)


class Fista(torch.optim.Optimizer):
    """FISTA with the L1 proximal step and a non-negativity clamp, as the authors' fista.py: momentum
    y = p + (α-1)/α' (p - p_prev), then p = max(soft_threshold(y - lr·grad, lr·λ), 0). ``restart`` resets α."""

    def __init__(self, params, lr: float, weight: float):
        super().__init__(params, dict(lr=lr, weight=weight))

    @torch.no_grad()
    def step(self, restart: bool = False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "alpha" not in state or restart:
                    state["alpha"], y = torch.ones_like(p), p.clone()
                else:
                    alpha = state["alpha"]
                    state["alpha"] = (1 + (1 + 4 * alpha**2).sqrt()) / 2
                    y = p + ((alpha - 1) / state["alpha"]) * (p - state["previous"])
                state["previous"] = p.clone()
                moved = y - group["lr"] * p.grad
                threshold = group["lr"] * group["weight"]
                state["unclamped"] = torch.sign(moved) * (moved.abs() - threshold).clamp_min(0)
                p.copy_(state["unclamped"].clamp_min(0))

    def scores(self, masks: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        """Each mask's value, and for a mask clamped at 0 its last value before the clamp (<= 0): how far
        below zero the proximal step pushed it. It orders the zero masks when they are more than the target needs."""
        out = {}
        for key, p in masks.items():
            unclamped = self.state[p].get("unclamped")
            value = p.detach().flatten()
            out[key] = value if unclamped is None else torch.where(value > 0, value, unclamped.flatten())
        return out


def scaled_mask_step(mask_step: int, batches_per_epoch: int) -> int:
    """The authors' ``mask_step`` in batches, scaled down for epochs shorter than theirs."""
    if batches_per_epoch >= AUTHORS_BATCHES_PER_EPOCH:
        return mask_step
    return max(1, round(mask_step * batches_per_epoch / AUTHORS_BATCHES_PER_EPOCH))


def choose_structure(cfg_structure: str, blocks: list[Block], block_shares: dict[str, float], max_share: float) -> str:
    """``auto``: blocks when the model has residual blocks and none holds more than ``max_share`` of the
    MACs (so block granularity can meet a target closely), channels otherwise."""
    if cfg_structure != "auto":
        if cfg_structure == "block" and not blocks:
            raise ConfigError(
                "method.structure=block but this model has no residual blocks GAL can remove; "
                "use method.structure=channel"
            )
        return cfg_structure
    return "block" if blocks and max(block_shares.values()) <= max_share else "channel"


@dataclass
class GalSettings:
    needs_validation: bool = setting(
        True, "bool", help="the best mask epoch is chosen on data.val_fraction (the authors chose on the test set)"
    )
    structure: str = setting(
        "auto",
        choices=("auto", "block", "channel"),
        help="block | channel | auto: blocks when the net has residual blocks none of which holds",
    )
    max_block_share: float = setting(
        0.1,
        "real",
        "(0, 1]",
        help="auto picks channels when removing one block would cut more than this share of the MACs",
    )
    sparsity: float = setting(
        0.6, "real", "[0, 100]", help="lambda of the mask L1 (GAL-0.6); gal_0.8 and VGG's gal_0.05 are presets"
    )
    mu: float = setting(1.0, "real", "[0, 1000]", help="weight of the MSE to the teacher's logits")
    mask_init: str = setting(
        "normal", choices=("normal", "one"), help="normal: N(0, 1) as the authors' code; one: all masks start at 1"
    )
    mask_step: int = setting(
        200,
        "int",
        "[1, 10000000]",
        help="a FISTA step every this many batches, scaled for epochs shorter than 391 batches",
    )
    epochs: int = setting(100, "int", "[0, 100000]", help="mask learning, before the common fine-tune")
    lr: float = setting(0.01, "real", "(0, 100]", help="SGD for weights and discriminator, FISTA for the masks")
    lr_step: int = setting(30, "int", "[1, 100000]", help="lr x lr_gamma every lr_step epochs")
    lr_gamma: float = setting(0.1, "real", "(0, 1]", help="lr multiplier every lr_step epochs")
    momentum: float = setting(0.9, "real", "[0, 1)", help="SGD momentum of the weights and the discriminator")
    weight_decay: float = setting(0.0002, "real", "[0, 1]", help="weight decay of the weights and the discriminator")
    select: str = setting(
        "val",
        choices=("val", "last"),
        help="val: keep the epoch with the best validation accuracy; last: the last epoch",
    )


@register_method
class GAL(Method):
    name = "gal"
    description = "GAL (CVPR'19): label-free soft masks on residual blocks or channels, learned against the dense teacher with a discriminator and FISTA"
    needs_scores = True
    settings = GalSettings
    uses_allocation = False  # its learned masks choose what goes

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        settings, pruner = self.settings, ctx.pruner
        example = pruner.example_inputs
        blocks = residual_blocks(model, example)
        shares = {b.name: self._removed_share(model, [b], pruner) for b in blocks}
        structure = choose_structure(settings.structure, blocks, shares, settings.max_block_share)
        if structure == "block":
            reachable = self._removed_share(model, blocks, pruner)
            if reachable < ctx.target:
                raise ConfigError(
                    f"GAL with method.structure=block removes at most {reachable:.3f} of the "
                    f"{pruner.cost_name} (every residual block); lower {pruner.target_key} or use method.structure=channel"
                )
        ctx.report.metrics(
            {
                "gal/structures": len(blocks)
                if structure == "block"
                else sum(g.channels for g in pruner.groups(model).values()),
                "gal/lambda": float(settings.sparsity),
            },
            0,
        )
        teacher = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        masks = SoftMasks(model, structure, blocks, pruner, settings.mask_init, generator)
        try:
            scores = self.learn_masks(model, teacher, masks, ctx)
        finally:
            masks.remove_hooks()
        return self.remove(model, masks, scores, ctx)

    # --- learning the masks ----------------------------------------------------------------------
    def learn_masks(self, model: nn.Module, teacher: nn.Module, masks: SoftMasks, ctx: PruneContext) -> dict:
        """Trains the masked student; returns each structure's removal score (``Fista.score``)."""
        settings = self.settings
        with eval_mode(teacher), torch.no_grad():
            num_outputs = teacher(ctx.pruner.example_inputs).shape[1]
        ts = TeacherStudent(teacher, num_outputs, settings.lr, settings.momentum, settings.weight_decay)
        weights = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(weights, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
        fista = Fista(masks.parameters(), lr=settings.lr, weight=settings.sparsity)
        optimizers = (opt, ts.optimizer, fista)
        step = scaled_mask_step(int(settings.mask_step), len(ctx.training.loader))
        ctx.report.metrics({"gal/mask_step": step}, 0)
        if settings.select == "val":
            ctx.require_validation("method.select=val (or use method.select=last)")
        best = (-math.inf, None)
        start = 0
        if ctx.resume_state is not None:
            start, best = _load_state(ctx.resume_state, model, masks, ts, opt, fista, ctx)

        def student_loss(labels, student, teacher):  # label-free: ``labels`` is never read
            return {
                "mse": settings.mu * F.mse_loss(student, teacher),
                "adv": ts.adversarial_loss(student),
                "sparse": settings.sparsity * masks.l1(),
            }

        for epoch in range(start, int(settings.epochs)):
            lr = settings.lr * settings.lr_gamma ** (epoch // int(settings.lr_step))
            for o in optimizers:
                for group in o.param_groups:
                    group["lr"] = lr

            def mask_update(i, epoch=epoch):
                if i % step == 0:  # the authors restart FISTA's momentum on an lr decay's first batch
                    fista.step(restart=epoch % int(settings.lr_step) == 0 and i == 1)

            metrics = distill_epoch(
                model,
                ts,
                ctx.training.loader,
                _Both(opt, fista),
                student_loss,
                device=ctx.device,
                desc=f"gal {epoch + 1}/{settings.epochs}",
                quiet=ctx.quiet,
                after_step=mask_update,
            )
            values = masks.flat()
            metrics.update(mask_zero=(values <= 0).float().mean().item(), mask_l1=values.abs().sum().item(), lr=lr)
            if settings.select == "val":
                metrics["val_acc"] = score = ctx.validate(model)
                if score > best[0]:
                    best = (score, {**_snapshot(model, masks), "scores": fista.scores(masks.masks)})
            ctx.report.metrics({f"gal/{k}": v for k, v in metrics.items()}, epoch)
            ctx.save_state(_state(epoch + 1, model, masks, ts, opt, fista, best, ctx))
        ts.close()
        if best[1] is not None:
            _restore(model, masks, best[1])
            ctx.report.metrics({"gal/selected_val_acc": best[0]}, 0)
            return best[1]["scores"]
        return fista.scores(masks.masks)

    # --- removing what the masks say ------------------------------------------------------------
    def remove(
        self, model: nn.Module, masks: SoftMasks, scores: dict[str, torch.Tensor], ctx: PruneContext
    ) -> nn.Module:
        """Remove structures in ascending ``scores`` until the target is met (a latency target: corrected by
        paired measurements, ``ChannelPruner.finish``). The masks alone would
        remove every structure at <= 0 (logged as the natural reduction); when that overshoots the
        target, the most negative before the clamp go first; when it falls short, the smallest masks next."""
        pruner = ctx.pruner
        masks.fold()
        if masks.structure == "block":
            order = sorted(scores, key=lambda k: scores[k].item())
            natural = [k for k in order if masks.masks[k].item() <= 0]
            trial = copy.deepcopy(model)
            for k in natural:
                self._remove_block(trial, masks.blocks[k])
            natural_reduction = pruner.reduction(trial)
            blocks = [masks.blocks[k] for k in order]
            for block in blocks[: pruner.finish(lambda n: self._without(model, blocks[:n]), ctx.target, len(blocks))]:
                self._remove_block(model, block)
        else:
            importance = _MaskImportance(scores, pruner, model)
            natural = [(k, i) for k, i in pruner.removal_order(model, importance) if masks.masks[k][i] <= 0]
            natural_reduction = pruner.reduction(pruner.remove(copy.deepcopy(model), natural))
            pruner.prune_to_target(model, importance, ctx.target)
        final = pruner.reduction(model)
        ctx.report.metrics(
            {"gal/natural_reduction": natural_reduction, "gal/final_reduction": final, "gal/zero_masks": len(natural)},
            0,
        )
        ctx.report.step(1, pruner.cost_metrics(final), model)
        return model

    @staticmethod
    def _remove_block(model: nn.Module, block: Block) -> None:
        replace_module(
            model, block.name, ShortcutOnly(model.get_submodule(block.name), block.shortcut_name, block.relu)
        )

    def _without(self, model: nn.Module, blocks: list[Block]) -> nn.Module:
        trial = copy.deepcopy(model)
        for b in blocks:
            self._remove_block(trial, b)
        return trial

    def _removed_share(self, model: nn.Module, blocks: list[Block], pruner: ChannelPruner) -> float:
        return pruner.reduction(self._without(model, blocks))


class _Both:
    """The student's optimiser as ``distill_epoch`` sees it: zero_grad clears the masks' gradients too
    (the authors zero both each batch), step moves only the weights; FISTA steps the masks itself."""

    def __init__(self, weights: torch.optim.Optimizer, masks: torch.optim.Optimizer):
        self.weights, self.masks = weights, masks
        self.extra_params = [p for g in masks.param_groups for p in g["params"]]  # beside the student's

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.weights.zero_grad(set_to_none=set_to_none)
        self.masks.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.weights.step()


class _MaskImportance:
    """A channel group's learned mask as its importance (lower goes first); keyed by the group's root."""

    def __init__(self, scores: dict[str, torch.Tensor], pruner: ChannelPruner, model: nn.Module):
        self.by_root = {
            id(g.group[0].dep.target.module): scores[k] for k, g in pruner.groups(model).items() if k in scores
        }

    def __call__(self, group):
        return self.by_root.get(id(group[0].dep.target.module))


def _snapshot(model: nn.Module, masks: SoftMasks) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "masks": {k: m.detach().clone() for k, m in masks.masks.items()},
    }


@torch.no_grad()
def _restore(model: nn.Module, masks: SoftMasks, snapshot: dict) -> None:
    model.load_state_dict(snapshot["model"])
    for k, m in masks.masks.items():
        m.copy_(snapshot["masks"][k])


# --- checkpoints: after every mask epoch, so a killed or requeued run continues where it stopped ----------
def _state(epoch, model, masks, ts, opt, fista, best, ctx) -> dict:
    return {
        "epoch": epoch,
        **_snapshot(model, masks),
        "discriminator": copy.deepcopy(ts.discriminator.state_dict()),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "d_optimizer": copy.deepcopy(ts.optimizer.state_dict()),
        "fista": copy.deepcopy(fista.state_dict()),
        "best_score": best[0],
        "best": best[1],
        **ctx.rng_state(),
    }


def _load_state(state, model, masks, ts, opt, fista, ctx) -> tuple[int, tuple]:
    _restore(model, masks, state)
    ts.discriminator.load_state_dict(state["discriminator"])
    opt.load_state_dict(state["optimizer"])
    ts.optimizer.load_state_dict(state["d_optimizer"])
    fista.load_state_dict(state["fista"])
    ctx.restore_rng(state)
    return int(state["epoch"]), (float(state["best_score"]), state["best"])
