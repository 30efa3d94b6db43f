"""MetaPruning: the PruningNet's masked widths equal the cropped network, the search stays in the cost
window, never reads the test split, never loses its best, resumes identically; bad values stop early.
The run on digits is in tests/test_distributed.py (under torchrun)."""

import copy
import random

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from harness.config import compose
from harness.core.surgery import ChannelPruner
from harness.core.widths import WidthSpace
from harness.latency.table import named_layers_of
from methods import create_method
from methods.base import PruneContext, Reporting, TrainingContext
from methods.metapruning import Encoding, _Candidates, _cropped, _dense_state, build_pruningnet
from tasks.digits import DigitsTask
from tasks.models import create_model
from tests.fixtures import ToyLatency

SMALL = [
    "method=metapruning",
    "method.pruningnet_epochs=1",
    "method.population=4",
    "method.generations=3",
    "method.parents=2",
    "method.mutations=1",
    "method.crossovers=1",
    "method.recalibration_batches=2",
    "method.grid=[0.25,0.4,0.55,0.7,0.85,1.0]",
    "method.window=0.05",
]


def _model(width=8):
    torch.manual_seed(0)
    return create_model("digits_resnet", 10, width=width)


@pytest.mark.quick
def test_the_inherited_network_computes_what_the_pruningnet_does_at_its_encoding():
    model = _model()
    pruner = ChannelPruner(model, torch.randn(1, 1, 8, 8), [model.fc], 0.0)
    space = WidthSpace(model, pruner)
    encoding = Encoding(space, 4)
    net = build_pruningnet(model, pruner, encoding, hidden=8)
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    genes = tuple(i % 4 for i in range(len(space.keys)))
    widths = space.clip([w * (0.4 + 0.2 * g) for w, g in zip(space.high, genes)])
    encoding.set(genes, widths)
    x = torch.randn(6, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        expected = net(x)
    final = space.build(widths)
    final.load_state_dict(_cropped(_dense_state(net), final.state_dict()))
    assert [final.get_submodule(k).out_channels for k in space.keys if k != "fc"] == [
        w for k, w in zip(space.keys, widths) if k != "fc"
    ]
    with torch.no_grad():
        assert torch.allclose(final.eval()(x), expected, atol=1e-5)


def _ctx(model, saved, resume=None, target=0.5):
    x, y = DigitsTask(compose(["task=digits"])).datasets()[0].tensors
    train, val = TensorDataset(x[:1200], y[:1200]), TensorDataset(x[1200:], y[1200:])
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val, batch_size=256)

    def validate(m):
        m.eval()
        with torch.no_grad():
            return sum((m(a).argmax(1) == b).sum().item() for a, b in val_loader) / len(val)

    metrics, test_reads, logged_steps = [], [], []
    recipe = OmegaConf.create(
        {"epochs": 1, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "schedule": "cosine"}
    )
    ctx = PruneContext(
        pruner=ChannelPruner(model, x[:1], [model.fc], 0.1),
        target=target,
        device=torch.device("cpu"),
        training=TrainingContext(
            loader=loader,
            loss_fn=nn.CrossEntropyLoss(),
            train=lambda m, loader, recipe, desc="": {},
            finetune_recipe=recipe,
            train_recipe=recipe,
        ),
        report=Reporting(
            quick_test_metric=lambda m: test_reads.append(m) or 0.0,
            log_step=lambda step, m: logged_steps.append(m),
            log_metrics=lambda m, step: metrics.append((step, m)),
        ),
        val_loader=val_loader,
        validate=validate,
        quiet=True,
        save_state=lambda state: saved.append(copy.deepcopy(state)),
        resume_state=resume,
    )
    ctx.test_reads, ctx.logged_steps = test_reads, logged_steps  # what the test split was read for
    return ctx, metrics


def test_search_stays_in_the_window_keeps_its_best_and_never_reads_the_test_split():
    method = create_method(compose([*SMALL, "method.final=inherit"]))
    model, saved = _model(), []
    ctx, metrics = _ctx(copy.deepcopy(model), saved)
    pruned = method.prune(copy.deepcopy(model), ctx)
    # the method holds no evaluator of the test split: each read of it went straight into a logged step
    assert len(ctx.test_reads) == sum("acc" in m for m in ctx.logged_steps) <= 1
    assert 0.5 <= ctx.pruner.reduction(pruned) <= 0.55
    evaluated = saved[-1]["evaluated"]
    assert len(evaluated) >= 8 and len({tuple(g) for g, _ in evaluated}) == len(evaluated)  # no duplicate
    space = WidthSpace(model, ctx.pruner)
    grid = sorted(method.settings.grid)
    for genes, _ in evaluated:  # every candidate lies in [target, target + window]
        widths = space.clip([grid[g] * hi for g, hi in zip(genes, space.high)])
        assert 0.5 <= space.reduction(widths) <= 0.55
    best = [m["metapruning/best_fitness"] for _, m in metrics if "metapruning/best_fitness" in m]
    assert len(best) == 3 and best == sorted(best)  # per generation, never decreasing
    assert any("metapruning/pruningnet_loss" in m for _, m in metrics)

    # A search killed after its first generation resumes to the same candidates and the same network.
    resumed_saved = []
    resumed = method.prune(copy.deepcopy(model), _ctx(copy.deepcopy(model), resumed_saved, resume=saved[1])[0])
    assert resumed_saved[-1]["evaluated"] == evaluated
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), pruned.state_dict().values()))


@pytest.mark.quick
@pytest.mark.parametrize(
    "override, expected",
    [
        ("method.grid=[]", "method.grid"),
        ("method.population=1", "method.population"),
        ("method.grid=[0.5,1.0]", "window"),  # widths 1/2 or whole: no vector lands in [0.5, 0.525]
        ("method.mutations=40", "method.population"),
    ],
)
def test_bad_metapruning_values_exit_2_with_one_line(run_cli, tmp_path, override, expected):
    code, out, err = run_cli("run", "method=metapruning", override, f"results_dir={tmp_path}", "tracking=none")
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "baselines").exists()  # refused before any training


class _WidthDependentOverhead(ToyLatency):
    """The toy latency plus work the layers' sum leaves out and that shrinks with the widths (BN, adds)."""

    def __call__(self, model, x):
        return super().__call__(model, x) + 2e-4 * sum(cout for _, _, cout in named_layers_of(model, x).values())


@pytest.mark.quick
@pytest.mark.parametrize("cost", ["macs", "latency"])
def test_the_screen_estimates_a_candidate_without_building_it(cost):
    """A draw is screened by the layers' MACs or table times at its widths before the network is built: the
    estimate lies within the screen's margin of the exact reduction, and a screened-out draw is not built."""
    model = _model(16)
    pruner = ChannelPruner(model, torch.randn(1, 1, 8, 8), [model.fc], 0.1)
    if cost == "latency":
        pruner.use_cost(_WidthDependentOverhead(), model)
    draws = _Candidates(WidthSpace(model, pruner), [0.25, 0.4, 0.55, 0.7, 0.85, 1.0], 0.5, 0.05, random.Random(0))
    errors = []
    for _ in range(20):
        genes = draws.random()
        errors.append(draws.encoding.reduction(genes) - draws.estimate(genes))
    assert max(abs(e) for e in errors) < _Candidates.SCREEN_MARGIN and max(abs(e) for e in errors) > 0
    built = []
    draws.encoding.space.build = lambda widths: built.append(widths)  # any exact count now fails loudly
    far = draws.encoding.uniform(len(draws.encoding.fractions) - 1)  # full width: 0% reduction
    assert not draws.fits(far) and not built


@pytest.mark.quick
def test_a_window_random_draws_cannot_fill_is_refused_with_the_grids_reach():
    model = _model(16)
    pruner = ChannelPruner(model, torch.randn(1, 1, 8, 8), [model.fc], 0.1)
    space = WidthSpace(model, pruner)
    assert _Candidates(space, [0.25, 0.4, 0.55, 0.7, 0.85, 1.0], 0.5, 0.05, random.Random(0)).unreachable(200) is None
    # widths 0.85-1.0 reduce the MACs by at most ~25%: a 50% window is out of reach, said with the reach
    why = _Candidates(space, [0.85, 1.0], 0.5, 0.05, random.Random(0)).unreachable(200)
    assert why and "none of 200 random width vectors" in why and "uniform widths 1.00-0.85 reduce it by 0.000-0." in why
