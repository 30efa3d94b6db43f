"""W-Gates (a reconstruction): gates computed from the weights, their gradient, the cost terms, the run."""

import copy

import pytest
import torch
import torch.nn as nn

from harness.core.surgery import ChannelPruner
from harness.latency.predictor import WidthTimings, fit_and_compare, time_random_widths
from methods.wgates import WeightGates
from tests.conftest import last_json


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def _gated(seed: int = 0):
    torch.manual_seed(seed)
    model, x = Net().eval(), torch.randn(4, 3, 8, 8)
    pruner = ChannelPruner(model, x[:1], [model.fc], 0.1)
    return model, x, pruner, WeightGates(model, pruner.groups(model))


@pytest.mark.quick
def test_gates_are_a_function_of_the_weights_alone():
    """No free per-channel parameter: one map per layer (a filter's size) and one shift per group. The same
    weights give the same gates whatever the input; moving one filter's weights against its map closes it."""
    model, x, _, gates = _gated()
    assert sorted(p.numel() for p in gates.parameters()) == [1, 1, 27, 144]  # shifts; conv1 and conv2 maps
    gates.attach()
    model(x)
    first = {k: g.detach().clone() for k, g in gates.current.items()}
    model(torch.randn(4, 3, 8, 8) * 10)
    assert all(torch.equal(first[k], gates.current[k]) for k in first) and int(first["conv1"].sum()) == 16
    with torch.no_grad():
        direction = gates.maps["conv1"].weight.view(3, 3, 3)
        model.conv1.weight[5] -= 1e3 * direction  # its map's score falls far below the others'
    model(x)
    changed = (first["conv1"] != gates.current["conv1"]).nonzero().flatten().tolist()
    assert changed == [5] and torch.equal(first["conv2"], gates.current["conv2"])
    gates.detach()


@pytest.mark.quick
def test_the_straight_through_gradient_reaches_the_gate_maps_and_shifts():
    model, x, _, gates = _gated()
    gates.attach()
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gates.parameters())
    gates.detach()


@pytest.mark.quick
def test_a_group_never_closes_all_its_gates():
    model, x, pruner, gates = _gated()
    with torch.no_grad():
        for shift in gates.shifts.values():
            shift.fill_(-100.0)  # every score far below the threshold
    groups = pruner.groups(model)
    closed = gates.gates()
    assert {k: int(g.sum()) for k, g in closed.items()} == {k: g.min_keep for k, g in groups.items()}
    assert all(g.min_keep >= 1 for g in groups.values())


@pytest.mark.quick
def test_the_latency_predictor_reports_its_error_on_held_out_vectors():
    """On timings that follow a known smooth law the fit is close (R² > 0.9) on vectors it never saw; the
    table's predictions are scored on the same held-out vectors."""
    g = torch.Generator().manual_seed(0)
    fractions = torch.cat([torch.ones(1, 3), 0.1 + 0.9 * torch.rand(79, 3, generator=g)])
    ms = 1.0 + 2.0 * fractions[:, 0] * fractions[:, 1] + fractions[:, 2]
    timings = WidthTimings(["a", "b", "c"], [{"a": int(10 * f[0])} for f in fractions], fractions, ms)
    _, report = fit_and_compare(timings, 0.25, lambda widths: 2.0, g, steps=600)
    assert report["held_out"] == 20 and report["r2"] > 0.9 and report["rel_error"] < 0.05
    assert report["table_rel_error"] > report["rel_error"]


@pytest.mark.quick
def test_random_widths_are_built_and_timed_the_dense_network_first(one_thread):
    model, x, pruner, _ = _gated()
    timings = time_random_widths(model, pruner, x, 6, torch.Generator().manual_seed(0), repeats=2)
    assert timings.fractions.shape == (6, 2) and torch.equal(timings.fractions[0], torch.ones(2))
    assert (timings.ms > 0).all() and len(set(map(str, timings.widths))) == 6
    groups = pruner.groups(model)
    assert all(groups[k].min_keep <= w[k] <= groups[k].channels for w in timings.widths for k in w)


DIGITS = ["task=digits", "train.epochs=2", "measure.repeats=2", "measure.warmup=1", "measure.max_seconds=0"]


@pytest.fixture(scope="module")
def shared_results(tmp_path_factory):
    """One results dir for the module's runs: the digits baseline is trained once."""
    return tmp_path_factory.mktemp("wgates")


def test_wgates_prunes_digits_to_the_target_and_logs_its_gates(run_cli, shared_results):
    code, out, err = run_cli(
        "run", *DIGITS, "finetune.epochs=3", "quiet=true", f"results_dir={shared_results}", "method=wgates", "--json"
    )
    assert code == 0, err
    s = last_json(out)
    assert 0.5 <= s["flops_reduction"] < 0.52 and s["final_acc"] >= 0.9 and s["prune_epochs"] > 0
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{shared_results / 'mlflow.db'}")
    run = client.get_run(s["mlflow_run_id"])
    assert run.data.tags["reconstruction"] == "true"
    cost = [m.value for m in client.get_metric_history(run.info.run_id, "wgates/cost")]
    assert cost[0] > 0.5 >= cost[-1] and run.data.metrics["wgates/met_by_gates"] == 1.0
    assert "wgates/flipped_last_epoch" in run.data.metrics and "wgates/removed" in run.data.metrics


def test_wgates_with_a_fitted_latency_predictor_reaches_a_latency_target(run_cli, shared_results, one_thread):
    code, out, err = run_cli(
        "run", *DIGITS, "finetune.epochs=1", "quiet=true", f"results_dir={shared_results}", "method=wgates",
        "method.cost=latency", "method.latency_samples=16", "prune.target=latency", "prune.latency_reduction=0.2",
        "measure.target_batch=32", "measure.batch_sizes=[1]", "threads=1", "--json",
    )  # fmt: skip
    assert code == 0, err
    s = last_json(out)
    assert s["latency_corrections"] and s["flops_reduction"] > 0
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{shared_results / 'mlflow.db'}").get_run(s["mlflow_run_id"])
    for key in ("r2", "rel_error", "table_rel_error", "held_out"):
        assert f"wgates/predictor/{key}" in run.data.metrics, key
    assert run.data.metrics["wgates/predictor/held_out"] == 3


def test_a_latency_cost_with_a_macs_target_is_refused_before_training(run_cli, tiny_digits):
    code, _, err = run_cli("run", *tiny_digits, "method=wgates", "method.cost=latency")
    assert code == 2 and "method.cost=latency" in err and "prune.target=latency" in err and "Traceback" not in err


def test_a_resumed_wgates_schedule_ends_where_an_uninterrupted_one_does():
    from torch.utils.data import DataLoader, TensorDataset

    from harness.config import compose
    from harness.core.surgery import channel_widths
    from methods import create_method
    from tasks.digits import DigitsTask
    from tasks.models import create_model
    from tests.fixtures import prune_context

    x, y = DigitsTask(compose(["task=digits"])).datasets()[0].tensors

    def ctx(model, saved, resume=None):
        loader = DataLoader(
            TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        return prune_context(
            model, 0.4, loader, x[:1], resume_state=resume, save_state=lambda st: saved.append(copy.deepcopy(st))
        )

    method = create_method(compose(["method=wgates"]))
    torch.manual_seed(0)
    start = create_model("digits_resnet", 10, width=8)
    saved = []
    whole = method.prune(copy.deepcopy(start), ctx(copy.deepcopy(start), saved))
    assert len(saved) >= 2  # a checkpoint after every epoch
    torch.manual_seed(5)
    resumed = method.prune(copy.deepcopy(start), ctx(copy.deepcopy(start), [], resume=saved[0]))
    assert channel_widths(resumed) == channel_widths(whole)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
