"""Teacher-student learning shared by GAL and AIP.

The teacher is a frozen copy of the dense baseline. ``TeacherStudent`` holds it and an MLP
discriminator on logits (GAL's: C -> 128 -> 256 -> 128 -> 1, ReLU between), and gives the losses:
logit MSE, KD (Hinton), attention transfer (Zagoruyko & Komodakis: the channel mean of squared
activations, flattened and L2-normalised, compared at stage outputs) and the adversarial pair.
``distill_epoch`` is the one training loop both methods run; each method says what its student loss is.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core import distributed
from harness.core.errors import NumericalError
from harness.core.hooks import FeatureTap, frozen  # noqa: F401  (FeatureTap: the teacher's taps)
from harness.core.surgery import eval_mode
from harness.core.train import progress


class Discriminator(nn.Module):
    """Teacher (1) vs student (0) on logits; returns the pre-sigmoid score (the sigmoid is in the loss)."""

    def __init__(self, num_outputs: int, hidden: tuple[int, ...] = (128, 256, 128)):
        super().__init__()
        sizes = (num_outputs, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        self.body = nn.Sequential(*layers)
        for m in self.body:
            if isinstance(m, nn.Linear):  # the authors' initialisation
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.body(logits).squeeze(1)


def pooled(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample logits: dense predictions (segmentation) are averaged over their spatial positions."""
    return logits.flatten(2).mean(2) if logits.dim() > 2 else logits


def attention_map(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Σ over the chosen layers of the mean squared difference of the normalised attention maps."""
    return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in zip(student, teacher))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD: KL(teacher || student) on temperature-softened outputs, times T²."""
    s, t = pooled(student), pooled(teacher)
    return (
        F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        * temperature**2
    )


def probe(model: nn.Module, example: torch.Tensor, attach: Callable[[str, nn.Module], object]) -> None:
    """One eval-mode, no-grad forward pass of ``example`` with ``attach(name, module)`` (which registers a
    hook and returns its handle) applied to every named submodule; the hooks are removed afterwards."""
    handles = [attach(name, m) for name, m in model.named_modules() if name]
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()


def stage_outputs(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The modules whose outputs end each spatial stage: for every feature-map size larger than 1x1, among
    the outermost modules that output it, the last to finish. ResNets give their stem and stages, VGG the
    ReLU before each pool. Only names are returned, so the same layers can be found in a pruned copy."""
    seen: dict[tuple[int, ...], list[tuple[int, int, str]]] = {}
    probe(model, example, lambda name, m: m.register_forward_hook(_noter(seen, name)))
    out = []
    for producers in seen.values():  # sizes in order of first appearance
        depth = min(d for d, _, _ in producers)
        out.append(max((order, name) for d, order, name in producers if d == depth)[1])
    return out


def _noter(seen: dict, name: str):
    def hook(module, inputs, output):  # returns None: a forward hook's return value would replace the output
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
            producers = seen.setdefault(tuple(output.shape[-2:]), [])
            producers.append((name.count("."), sum(len(v) for v in seen.values()), name))

    return hook


class TeacherStudent:
    """The frozen teacher, the discriminator and its optimiser (SGD, stepped once per batch)."""

    def __init__(
        self,
        teacher: nn.Module,
        num_outputs: int,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        attention_layers: list[str] = (),
    ):
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        device = next(self.teacher.parameters()).device
        self.discriminator = Discriminator(num_outputs).to(device)
        self.optimizer = torch.optim.SGD(
            self.discriminator.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.attention_layers = list(attention_layers)
        self.teacher_tap = FeatureTap(self.teacher, self.attention_layers)

    @torch.no_grad()
    def teach(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.teacher(x), self.teacher_tap.features()

    def discriminator_step(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict[str, float]:
        """One update of D on teacher (label 1) vs student (label 0) logits; returns its loss and accuracy."""
        d = self.discriminator
        real, fake = d(pooled(teacher_logits).detach()), d(pooled(student_logits).detach())
        loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.discriminator.parameters())
        self.optimizer.step()
        accuracy = ((real > 0).float().mean() + (fake <= 0).float().mean()) / 2
        return {"d_loss": loss.item(), "d_acc": accuracy.item()}

    def adversarial_loss(self, student_logits: torch.Tensor) -> torch.Tensor:
        """The student's loss for fooling D: its logits should be scored as the teacher's."""
        with frozen(self.discriminator.parameters()):
            score = self.discriminator(pooled(student_logits))
        return F.binary_cross_entropy_with_logits(score, torch.ones_like(score))

    def close(self) -> None:
        self.teacher_tap.remove()


# (labels, student logits, teacher logits) -> named loss terms; a label-free method ignores the labels.
StudentLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def _student_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, trained: list, what: str, step: int) -> float:
    """One optimiser step on ``loss`` (gradients averaged over the ranks); its value, refused when not finite."""
    value = loss.item()
    if not math.isfinite(value):
        raise NumericalError(f"{what} became {value} at step {step}; lower the lr (method.lr)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(trained)
    optimizer.step()
    return value


def distill_epoch(
    student: nn.Module,
    ts: TeacherStudent,
    loader,
    optimizer: torch.optim.Optimizer,
    student_loss: StudentLoss,
    *,
    device: torch.device,
    desc: str,
    quiet: bool,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: per batch, the teacher's logits, one discriminator step, then one student
    step on the sum of the terms ``student_loss(labels, student_logits, teacher_logits)`` returns.
    ``after_step(i)`` runs after each student step (GAL's FISTA mask step). Returns each term's mean,
    the discriminator's loss and accuracy, and the student's top-1 agreement with the teacher."""
    student.train()
    # In a distributed run each rank distils on its shard and every gradient is averaged; ``trained`` is
    # what has gradients here (the student, and GAL's masks).
    trained = [p for p in student.parameters() if p.requires_grad] + list(getattr(optimizer, "extra_params", ()))
    sums: dict[str, float] = {}
    n = 0
    for i, (x, y) in enumerate(progress(loader, desc=desc, quiet=quiet), 1):
        x = x.to(device, non_blocking=True)
        teacher_logits, _ = ts.teach(x)
        student_logits = student(x)
        terms = ts.discriminator_step(teacher_logits, student_logits)
        losses = student_loss(y.to(device, non_blocking=True), student_logits, teacher_logits)
        value = _student_step(sum(losses.values()), optimizer, trained, f"{desc}: the student's loss", i)
        if after_step is not None:
            after_step(i)
        agree = (pooled(student_logits).argmax(1) == pooled(teacher_logits).argmax(1)).float().mean().item()
        terms.update({k: v.item() for k, v in losses.items()}, agreement=agree, loss=value)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v * len(x)
        n += len(x)
    return {k: v / max(n, 1) for k, v in sums.items()}


def distill(
    student: nn.Module,
    teacher: nn.Module,
    loader,
    steps: int,
    *,
    loss_fn: nn.Module,
    lr: float,
    temperature: float,
    alpha: float,
    device: torch.device,
    desc: str,
    quiet: bool,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> dict[str, float]:
    """``steps`` SGD steps (cycling over ``loader``) of Hinton's distillation from a frozen ``teacher``:
    ``alpha`` · KD at ``temperature`` + (1 − ``alpha``) · the task's loss on the labels. Returns the mean
    loss and the student's top-1 agreement with the teacher. No discriminator: GAL's and AIP's loop is
    ``distill_epoch``."""
    if steps <= 0:
        return {}
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    teacher.eval()
    student.train()
    sums, n, i = {"loss": 0.0, "agreement": 0.0}, 0, 0
    bar = progress(range(steps), desc=desc, quiet=quiet)
    batches = iter(loader)
    for i in bar:
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad():
            teacher_logits = teacher(x)
        logits = student(x)
        loss = alpha * kd_loss(logits, teacher_logits, temperature) + (1 - alpha) * loss_fn(logits, y)
        value = _student_step(loss, optimizer, params, f"{desc}: the distillation loss", i + 1)
        agree = (pooled(logits).argmax(1) == pooled(teacher_logits).argmax(1)).float().mean().item()
        sums["loss"] += value * len(x)
        sums["agreement"] += agree * len(x)
        n += len(x)
    distributed.sync_buffers(student)
    return {k: v / max(n, 1) for k, v in sums.items()}
