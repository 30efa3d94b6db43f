"""SCOP and ACP."""

import copy

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from harness.config import compose
from harness.core.clusters import dbscan_count
from harness.core.surgery import ChannelPruner
from harness.core.widths import WidthSpace
from methods.acp import ACP, CandidateFitness
from methods.base import PruneContext, Reporting, TrainingContext
from methods.l1 import FilterL1Importance
from methods.scop import SCOP, KnockoffControl, uniform_rate_plan
from tests.conftest import last_json
from tests.fixtures import train_digits_net


def _loader(x, y, batch=64):
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))


def _ctx(model, target, loader, metrics=None, validate=None, train=None):
    log = metrics if metrics is not None else {}
    return PruneContext(
        pruner=ChannelPruner(model, torch.randn(1, 1, 8, 8), [model.fc], 0.1),
        target=target,
        device=torch.device("cpu"),
        training=TrainingContext(
            loader=loader, loss_fn=nn.CrossEntropyLoss(), train=train, finetune_recipe=compose(["task=digits"]).finetune
        ),
        report=Reporting(
            quick_test_metric=lambda m: 0.0,
            log_step=lambda s, m: None,
            log_metrics=lambda m, step=None: log.setdefault("history", []).append((step, dict(m))),
        ),
        validate=validate,
        val_loader=[] if validate else None,
        quiet=True,
    )


# --- SCOP ------------------------------------------------------------------------------------------
def test_scop_trains_only_beta_with_the_network_frozen():
    model, x, y = train_digits_net(steps=40)
    before = copy.deepcopy(model.state_dict())
    ctx = _ctx(model, 0.3, _loader(x[:256], y[:256]))
    control = KnockoffControl(model, ctx.pruner)
    for p in model.parameters():
        p.requires_grad_(False)
    SCOP(OmegaConf.merge(compose(["method=scop"]).method, {"epochs": 2})).learn_controls(model, control, ctx)
    control.remove()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    betas = torch.cat([b.detach() for b in control.parameters()])
    assert not torch.allclose(betas, torch.full_like(betas, 0.5)) and betas.min() >= 0 and betas.max() <= 1


def test_scop_scores_channels_fed_pure_noise_as_redundant_before_informative_ones():
    """Channels whose conv output is replaced by fresh Gaussian noise (independent of the image, so real
    and knockoff features are equally uninformative) score below the informative channels of their layer."""
    torch.manual_seed(0)
    model, x, y = train_digits_net(steps=60)
    noisy = [0, 3, 5, 9]

    def noise(module, inputs, output):
        output = output.clone()
        output[:, noisy] = torch.randn_like(output[:, noisy])
        return output

    model.block1.conv1.register_forward_hook(noise)
    ctx = _ctx(model, 0.3, _loader(x[:512], y[:512]))
    control = KnockoffControl(model, ctx.pruner)
    for p in model.parameters():
        p.requires_grad_(False)
    SCOP(OmegaConf.merge(compose(["method=scop"]).method, {"epochs": 3})).learn_controls(model, control, ctx)
    key = next(k for k, sites in control.sites.items() if "block1.bn1" in sites)
    beta = control.beta["block1.bn1"].detach()
    scores = control.scores()[key]
    informative = [i for i in range(len(scores)) if i not in noisy]
    assert (beta[noisy] - 0.5).abs().max() < (beta[informative] - 0.5).abs().median()  # noise barely moves β
    ranked = torch.argsort(scores).tolist()
    assert sum(ranked.index(i) for i in noisy) / len(noisy) < len(ranked) / 4  # noise ranks in the bottom quarter
    assert (scores[informative] > scores[noisy].max()).float().mean() > 0.75


def test_scop_uniform_rate_is_the_smallest_that_meets_the_target():
    model = train_digits_net(steps=5)[0]
    pruner = ChannelPruner(model, torch.randn(1, 1, 8, 8), [model.fc], 0.1)
    scores = {k: torch.rand(g.channels, dtype=torch.float64) for k, g in pruner.groups(model).items()}
    plan, rate = uniform_rate_plan(pruner, model, scores, 0.4)
    pruned = pruner.remove(copy.deepcopy(model), plan)
    assert pruner.reduction(pruned) >= 0.4
    groups = pruner.groups(model)
    counts = {k: sum(1 for key, _ in plan if key == k) for k in groups}
    for k, g in groups.items():  # every group loses floor(rate x width), lowest scores first
        assert counts[k] == min(int(rate * g.channels + 1e-9), g.channels - g.min_keep)
        assert sorted(i for key, i in plan if key == k) == sorted(torch.argsort(scores[k])[: counts[k]].tolist())
    smaller = [r for r in sorted({i / g.channels for g in groups.values() for i in range(g.channels + 1)}) if r < rate]
    at_smaller = [
        (k, i)
        for k, g in groups.items()
        for i in torch.argsort(scores[k])[: min(int(smaller[-1] * g.channels + 1e-9), g.channels - g.min_keep)].tolist()
    ]
    assert pruner.reduction(pruner.remove(copy.deepcopy(model), at_smaller)) < 0.4  # the next smaller rate misses it


# --- ACP -------------------------------------------------------------------------------------------
def test_acp_channels_that_copy_a_few_channels_collapse_to_that_many_clusters():
    torch.manual_seed(0)
    distinct = torch.randn(3, 64)
    maps = distinct.repeat_interleave(6, dim=0) * torch.rand(18, 1) * 3  # 3 patterns, each 6 times, rescaled
    assert dbscan_count(maps, eps=0.01, min_samples=5) == 3
    assert dbscan_count(torch.randn(18, 64), eps=0.01, min_samples=5) == 18  # all different: all noise points


def _acp_cfg(**over):
    return OmegaConf.merge(compose(["method=acp"]).method, over)


def test_acp_swarm_respects_bounds_and_coupling_caches_fitness_and_best_never_decreases():
    model, x, y = train_digits_net(steps=40)
    trained = []

    def train(m, loader, recipe, **kw):
        trained.append(1)
        return {}

    def validate(m):  # a deterministic fitness that prefers wider second stages
        return (
            float(
                sum(
                    c
                    for n, c in [(n, mod.out_channels) for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
                    if "block2" in n
                )
            )
            / 1000
        )

    metrics = {}
    ctx = _ctx(model, 0.5, _loader(x[:256], y[:256]), metrics=metrics, validate=validate, train=train)
    acp = ACP(_acp_cfg(particles=4, cycles=3, fitness_epochs=1, samples=64))
    space = WidthSpace(model, ctx.pruner, FilterL1Importance())
    prelim = acp.preliminary_widths(model, space, ctx)
    assert space.reduction(prelim) >= 0.5
    widths, best = acp.search(space, prelim, ctx)
    assert all(lo <= w <= hi for w, lo, hi in zip(widths, space.low, space.high))
    assert ctx.pruner.reduction(best) >= 0.5
    # residual coupling: the stem and both convs adding into block1 keep one width
    assert best.stem[0].out_channels == best.block1.conv2.out_channels
    assert best.down[0].out_channels == best.block2.conv2.out_channels == best.fc.in_features
    history = [m["acp/best_fitness"] for step, m in metrics["history"] if "acp/best_fitness" in m]
    assert len(history) == 4 and history == sorted(history)
    macs = [m for step, m in metrics["history"] if "acp/particle0_macs" in m]
    particle_macs = [v for m in macs for k, v in m.items() if k.endswith("_macs")]
    # every candidate at the target's cost: at or beyond it, and widened back when it went further
    assert all(ctx.pruner.base_macs * 0.45 <= v <= ctx.pruner.base_macs * 0.5 + 1 for v in particle_macs), particle_macs
    done = [m for step, m in metrics["history"] if "acp/candidates_trained" in m][0]
    assert done["acp/candidates_trained"] == len(trained) and done["acp/cache_hits"] == 16 - len(trained)
    before_hits = len(trained)
    assert acp.fitness.trained == len(acp.fitness.cache) == len(trained)
    # a cache hit trains nothing
    fitness = CandidateFitness(space, ctx, OmegaConf.create({"epochs": 1}))
    first = fitness(prelim)
    assert fitness(prelim) == first and len(trained) == before_hits + 1 and fitness.trained == 1


def test_acp_refuses_to_run_without_a_validation_split():
    model, x, y = train_digits_net(steps=5)
    ctx = _ctx(model, 0.5, _loader(x[:64], y[:64]))
    from harness.core.errors import ConfigError

    with pytest.raises(ConfigError, match="data.val_fraction"):
        ACP(_acp_cfg()).prune(model, ctx)


@pytest.mark.parametrize(
    "extra",
    [
        ["method=scop", "method.epochs=2"],
        ["method=acp", "method.particles=3", "method.cycles=1", "method.fitness_epochs=1"],
    ],
)
def test_scop_and_acp_hit_the_target_on_digits(run_cli, tmp_path, extra):
    results = tmp_path / "results"
    code, out, err = run_cli(
        "run",
        "task=digits",
        "train.epochs=10",
        "finetune.epochs=5",
        "measure.repeats=2",
        "measure.max_seconds=0",
        "quiet=true",
        f"results_dir={results}",
        *extra,
        "--json",
    )
    assert code == 0, err
    s = last_json(out)
    assert 0.5 <= s["flops_reduction"] <= 0.53 and s["final_acc"] >= 0.9
    from mlflow.tracking import MlflowClient

    keys = MlflowClient(f"sqlite:///{results / 'mlflow.db'}").get_run(s["mlflow_run_id"]).data.metrics.keys()
    name = extra[0].split("=")[1]
    expected = (
        {"scop/beta_mean", "scop/rate"} if name == "scop" else {"acp/best_fitness", "acp/eps", "acp/candidates_trained"}
    )
    assert expected <= keys


@pytest.mark.parametrize(
    "method",
    [
        ["method=aip", "method.steps=3"],
        ["method=scop", "method.epochs=3"],
        ["method=acp", "method.particles=2", "method.cycles=2", "method.fitness_epochs=1"],
    ],
)
def test_killed_during_pruning_the_same_command_resumes_to_the_same_result(run_cli, tmp_path, monkeypatch, method):
    """Killed right after the method's 2nd checkpoint (AIP's round, SCOP's β epoch, ACP's swarm cycle),
    the same command continues from it and ends where an uninterrupted run ends."""
    from harness.checkpoint import RunCheckpoint

    base = [
        "task=digits",
        "train.epochs=3",
        "finetune.epochs=1",
        "measure.repeats=1",
        "measure.max_seconds=0",
        "measure.batch_sizes=[1]",
        "quiet=true",
        "tracking=none",
        "data.val_fraction=0.1",
        *method,
        "--json",
    ]
    base.append(f"results_dir={tmp_path}")  # one baseline for the three runs; a finished run leaves no checkpoint
    code, out, err = run_cli("run", *base)
    assert code == 0, err
    uninterrupted = last_json(out)

    original = RunCheckpoint.save
    saves = []

    def save_then_die(self, state):
        original(self, state)
        if state["stage"] == "pruning":
            saves.append(1)
            if len(saves) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(RunCheckpoint, "save", save_then_die)
    code, out, err = run_cli("run", *base)
    assert code != 0 and len(saves) == 2
    after = []

    def record(self, state):
        original(self, state)
        if state["stage"] == "pruning":
            after.append(state["method"])

    monkeypatch.setattr(RunCheckpoint, "save", record)
    code, out, err = run_cli("run", *base)
    assert code == 0, err
    resumed = last_json(out)
    # it continued: its first checkpoint is the 3rd of the schedule, not the 1st again
    progress = lambda st: st.get("round", st.get("epoch")) if "swarm" not in st else st["swarm"]["cycle"] + 1  # noqa: E731
    assert progress(after[0]) == 3
    for key in ("pruned_acc", "final_acc", "final_macs", "channels"):
        assert resumed[key] == uninterrupted[key], key
