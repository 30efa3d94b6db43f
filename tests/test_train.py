"""The learning-rate schedules: torch's own schedulers are the reference for the shapes they share."""

import pytest
import torch
from omegaconf import OmegaConf

from harness.config import compose
from harness.core.train import lr_factor, make_scheduler, total_epochs

pytestmark = pytest.mark.quick  # the inner loop: pytest -m quick

STEPS = 7  # iterations per epoch


def _recipe(**kw):
    base = {
        "epochs": 10,
        "lr": 0.1,
        "schedule": "cosine",
        "milestones": [],
        "gamma": 0.1,
        "min_lr": 0.0,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "warmup_epochs": 0,
        "tail_epochs": 0,
        "tail_lr": None,
    }
    return OmegaConf.create({**base, **kw})


def _lrs(recipe, n):
    return _torch_lrs(lambda opt: make_scheduler(opt, recipe, STEPS), n, recipe.lr)


def _torch_lrs(make, n, lr=0.1):
    """The lr of each of ``n`` iterations under the scheduler that ``make(optimizer)`` builds."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "recipe, reference",
    [
        (_recipe(schedule="cosine"), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=70)),
        (_recipe(schedule="step", milestones=[3, 6]), lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [21, 42], 0.1)),
        (
            _recipe(schedule="triangular", lr=0.01, min_lr=0.001),
            lambda o: torch.optim.lr_scheduler.CyclicLR(
                o, 0.001, 0.01, step_size_up=35, step_size_down=35, cycle_momentum=False
            ),
        ),
    ],
)
def test_shapes_match_torchs_schedulers(recipe, reference):
    ours, theirs = _lrs(recipe, 70), _torch_lrs(reference, 70, recipe.lr)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-9)


def test_onecycle_warms_up_for_15_percent_then_anneals_to_zero():
    lrs = _lrs(_recipe(schedule="onecycle"), 70)
    peak = max(range(70), key=lrs.__getitem__)
    assert peak == 9 and lrs[peak] == pytest.approx(0.1)  # int(0.15 * 70) = 10 warm-up iterations
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :])) and lrs[-1] < 1e-3


def test_warmup_scales_any_schedule_up_from_zero():
    plain, warm = (
        _lrs(_recipe(schedule="step", milestones=[5]), 70),
        _lrs(_recipe(schedule="step", milestones=[5], warmup_epochs=2), 70),
    )
    assert warm[0] == pytest.approx(0.1 / 14) and warm[13] == pytest.approx(0.1) and warm[14:] == plain[14:]


def test_tail_stage_follows_the_schedule_at_its_constant_lr():
    recipe = _recipe(schedule="triangular", lr=0.01, min_lr=0.001, tail_epochs=3, tail_lr=0.0005)
    assert total_epochs(recipe) == 13
    lrs = _lrs(recipe, 91)
    assert lrs[:70] == _lrs(_recipe(schedule="triangular", lr=0.01, min_lr=0.001), 70)
    assert lrs[70:] == pytest.approx([0.0005] * 21)
    assert lr_factor(recipe, STEPS)(10_000) == pytest.approx(0.05)


def test_resnet56_finetune_has_the_gbn_papers_extra_stage():
    ft = compose(["task=resnet56"]).finetune
    assert (ft.epochs, ft.schedule, ft.lr, ft.min_lr, ft.batch_size) == (40, "triangular", 0.01, 0.001, 64)
    assert (ft.tail_epochs, ft.tail_lr, total_epochs(ft)) == (10, 0.001, 50)


def test_eval_every_evaluates_every_nth_epoch_and_the_last():
    from harness.core.train import train

    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    seen, evaluated = [], []
    train(
        torch.nn.Linear(3, 2),
        data,
        _recipe(epochs=5, schedule="constant"),
        loss_fn=torch.nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        evaluate=lambda m: evaluated.append(1) or {"acc": 1.0},
        quiet=True,
        on_epoch=lambda e, m: seen.append((e, "acc" in m)),
        eval_every=2,
    )
    assert seen == [(0, False), (1, True), (2, False), (3, True), (4, True)] and len(evaluated) == 3
