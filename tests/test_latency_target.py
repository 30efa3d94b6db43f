"""prune.target=latency: the per-layer latency table, the pruner's correction by measurement, the run."""

import json
from collections import defaultdict

import pytest
import torch
import torch.nn as nn

from harness.core.surgery import ChannelPruner, count_macs_params, smallest_prefix
from harness.latency.table import (
    LOOKUPS,
    LatencyTable,
    LayerShape,
    _axis,
    _rounded_up,
    layers_of,
    named_layers_of,
    narrowed_copies,
)
from tests.conftest import last_json


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
        self.conv2, self.bn2 = nn.Conv2d(64, 96, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(96)
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(self.dw(x))))
        return self.fc(x.mean((2, 3)))


def test_layers_are_found_with_their_input_sizes_and_kinds():
    found = layers_of(Net(), torch.randn(1, 3, 16, 16))
    kinds = [(s.op, s.size, cin, cout) for s, cin, cout in found]
    assert kinds == [
        ("conv", (16, 16), 3, 64),
        ("depthwise", (16, 16), 64, 64),
        ("conv", (16, 16), 64, 96),
        ("linear", (1,), 96, 10),
    ]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.pool(x + self.block(x))  # a functional residual add, then a pooling layer
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.timing  # asserts that narrower layers time faster: wants the machine to itself
def test_residual_adds_and_pooling_are_in_the_table_but_not_among_the_prunable_layers(tmp_path, one_thread):
    model, example = Residual().eval(), torch.randn(1, 3, 16, 16)
    found = [(s.op, s.size, cin, cout) for s, cin, cout in layers_of(model, example)]
    assert ("add", (16, 16), 16, 0) in found and ("max_pool2d", (16, 16), 16, 0) in found
    assert ("adaptive_avg_pool2d", (8, 8), 16, 0) in found and len(found) == 6
    assert set(named_layers_of(model, example)) == {"conv", "block", "fc"}  # names the pruner's costs use
    table = LatencyTable(8, torch.device("cpu"), tmp_path)
    pruner = ChannelPruner(model, example, [model.fc])
    table.prepare(model, example, lambda: narrowed_copies(model, pruner))
    pooled = next(s for s, _, _ in layers_of(model, example) if s.op == "max_pool2d")
    entry = table.data["layers"][pooled.key()]
    assert entry["out"] == [0] and 16 in entry["in"] and all(ms[0] > 0 for ms in entry["ms"])
    assert table._lookup(pooled, 4, 0) < table._lookup(pooled, 16, 0)  # a narrower input pools faster
    narrowest = narrowed_copies(model, pruner)[3]  # every group at 30%: 16 -> 5 channels (8 rounded up)
    for lookup in LOOKUPS:
        assert table.table_ms(narrowest, example, lookup) < table.table_ms(model, example, lookup)


@pytest.mark.parametrize(
    "probe, shares",
    [
        ([1.0, 2.0, 2.0], [1.0, 1.0]),  # g + 1 costs the whole step to g + 8: a vector block
        ([1.0, 1.125, 2.0], [0.0, 0.0]),  # an eighth of it: linear
        ([1.0, 1.5625, 2.0], [0.5, 0.5]),  # half way between the two
        ([1.0, 1.01, 1.01], [0.0, 0.0]),  # a step within the timing noise: linear
    ],
)
def test_a_layer_shapes_step_share_is_read_from_a_probe_just_past_an_aligned_width(tmp_path, probe, shares):
    table = LatencyTable(8, torch.device("cpu"), tmp_path)
    asked = []
    table._time_points = lambda shape, points, rounds: asked.append(points) or probe
    entry = {"in": [1, 8, 16, 24, 32], "out": [1, 8, 16, 24, 32, 40, 48], "ms": []}
    conv = LayerShape("conv", (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8))
    assert table._step_shares(conv, entry) == pytest.approx(shares)
    assert asked == [[(16, 48), (17, 48), (24, 48)], [(32, 32), (32, 33), (32, 40)]]  # each axis at g = 16 or 32
    asked.clear()  # ResNet-56's 16-wide layers: their only probe is at 8
    assert table._step_shares(conv, {"in": [1, 8, 16], "out": [1, 8, 16], "ms": []}) == pytest.approx(shares)
    assert asked == [[(8, 16), (9, 16), (16, 16)], [(16, 8), (16, 9), (16, 16)]]
    grouped = LayerShape("conv", (3, 3), (1, 1), (1, 1), (1, 1), 4, (8, 8))
    assert table._step_shares(grouped, entry) == [0.0, 0.0]  # its widths are multiples of its groups


def test_a_width_is_looked_up_at_the_next_aligned_width_never_past_the_next_grid_point():
    axis = [1, 8, 16, 20]
    assert [_rounded_up(axis, w, 8) for w in (1, 2, 8, 9, 16, 17, 20, 23)] == [1, 8, 8, 16, 16, 20, 20, 23]


def test_grid_axes_hold_aligned_widths_the_dense_widths_and_group_multiples():
    assert _axis([64, 40], 1) == [1, 8, 16, 24, 32, 40, 48, 56, 64]
    assert _axis([20], 1) == [1, 8, 16, 20]
    assert _axis([512], 1)[:3] == [1, 32, 64] and len(_axis([512], 1)) == 17  # at most 16 spaced points
    assert all(p % 4 == 0 for p in _axis([128, 36], 4))


@pytest.mark.timing  # asserts that narrower layers time faster: wants the machine to itself
def test_table_interpolates_between_timed_points_and_is_reused_from_its_cache(tmp_path, one_thread):
    torch.manual_seed(0)
    model, example = Net().eval(), torch.randn(1, 3, 16, 16)
    pruner = ChannelPruner(model, example, [model.fc])
    narrow = pruner.shrink_to(Net().eval(), {k: g.channels // 4 for k, g in pruner.groups(Net()).items()})
    table = LatencyTable(8, torch.device("cpu"), tmp_path)
    line = table.prepare(model, example, lambda: [narrow])
    assert table.path.is_file() and line["models"] == 2 and line["a"] > 0
    assert line["lookup"] == "stepped"
    assert all(len(e["step"]) == 2 and all(0 <= x <= 1 for x in e["step"]) for e in table.data["layers"].values())
    layers = layers_of(model, example)
    shape, cin, cout = layers[2]  # conv 64 -> 96: both widths are grid points, so the lookup is the timing
    entry = table.data["layers"][shape.key()]
    timed = entry["ms"][entry["in"].index(cin)][entry["out"].index(cout)]
    assert table._lookup(shape, cin, cout) == pytest.approx(timed)
    i, o = entry["in"].index(24), entry["out"].index(40)  # 28 -> 44 lies halfway between grid points
    corners = [entry["ms"][i + di][o + do] for di in (0, 1) for do in (0, 1)]
    assert table._lookup(shape, 28, 44, stepped=False) == pytest.approx(sum(corners) / 4)
    # a layer shape whose kernels compute channels in whole vector blocks: 28 -> 44 costs what 32 -> 48 does
    entry["step"] = [1.0, 1.0]
    assert table._lookup(shape, 28, 44) == pytest.approx(entry["ms"][i + 1][o + 1])
    entry["step"] = [0.0, 0.0]
    assert table._lookup(shape, 28, 44) == pytest.approx(sum(corners) / 4)
    # A second table on the same device, threads and batch times nothing: it reads the cached file.
    again = LatencyTable(8, torch.device("cpu"), tmp_path)
    again._time_grid = lambda *a: pytest.fail("a cached layer shape was timed again")
    assert again.prepare(model, example, lambda: pytest.fail("a cached line was fitted again")) == line
    assert again.predict(narrow, example) < again.predict(model, example)


def test_the_table_choice_is_corrected_by_measurement():
    """A table that over-predicts the reduction by 0.15: the secant steps find the prefix whose
    measured reduction meets the target."""
    model = Net().eval()
    example = torch.randn(1, 3, 16, 16)
    pruner = ChannelPruner(model, example, [model.fc])
    from harness.core.surgery import MacsCost, count_macs_params
    from harness.latency.target import Corrected

    true = lambda m: pruner.reduction(m) - 0.15  # noqa: E731  (the "measurement")
    correction = Corrected(MacsCost(), true, measured_from=0.3)
    pruner.use_cost(correction, model)
    pruned = pruner.prune_to_target(model, lambda g: torch.arange(len(g[0].idxs), dtype=torch.float), 0.3)
    measured = 1 - count_macs_params(pruned, example)[0] / pruner.base_macs - 0.15
    assert abs(measured - 0.3) <= correction.tolerance + 0.02  # within tolerance, up to one channel's step
    assert len(correction.corrections) >= 2 and correction.corrections[0]["measured"] < 0.3 - correction.tolerance


@pytest.mark.quick
def test_a_bracketed_correction_aims_along_the_prediction_not_the_prefix():
    """A removal order whose predicted cut grows as (k/n)^4 (GA's allocation sequence and a uniform width
    scale are far from linear in their index) and a measurement twice the prediction: aiming inside the
    bracket along the prefix took 5 measurements and stopped 4.7 points short; along the prediction, 3."""
    from harness.latency.target import Corrected

    n = 1000
    predicted = lambda k: (k / n) ** 4  # noqa: E731
    correction = Corrected(cost=None, measured_reduction=lambda k: min(1.0, 2 * predicted(k)), measured_from=0.5)
    k = correction.correct(smallest_prefix(predicted, 0.5, n), 0.5, lambda k: k, predicted, n)
    assert abs(2 * predicted(k) - 0.5) <= correction.tolerance
    assert len(correction.corrections) <= 4
    measured = [c["measured"] for c in correction.corrections]
    assert min(measured) < 0.5 - correction.tolerance < 0.5 + correction.tolerance < max(measured)  # bracketed


@pytest.mark.quick
def test_a_bracketed_correction_may_measure_past_five_but_stops_at_its_cap():
    """Once one measurement lies below the target and one above, up to ``bracketed`` measurements in all;
    a measurement that never lands within tolerance (noise flipping sides) stops there."""
    from harness.latency.target import Corrected

    n, flips = 1000, iter(range(100))
    noisy = lambda k: k / n + (0.1 if next(flips) % 2 else -0.1)  # noqa: E731  (always 10 points off)
    correction = Corrected(cost=None, measured_reduction=noisy, measured_from=0.5)
    correction.correct(500, 0.5, lambda k: k, lambda k: k / n, n)
    assert len(correction.corrections) == correction.bracketed == 8


@pytest.mark.quick
@pytest.mark.parametrize("confirm", [True, False])
def test_a_candidate_within_tolerance_is_confirmed_by_a_second_measurement(confirm):
    """Prefix 300 of 1000 (a true cut of 30%, the request) measures 31% once and 37% the second time: on
    the first measurement alone it is accepted; on the mean of two (34%) the search goes on and keeps a
    candidate whose two measurements agree."""
    from harness.latency.target import Corrected

    n, seen = 1000, defaultdict(int)

    def measure(k: int) -> float:
        seen[k] += 1
        return k / n + ({1: 0.01, 2: 0.07}[seen[k]] if k == 300 else 0.0)

    correction = Corrected(cost=None, measured_reduction=measure, measured_from=0.3, confirm=confirm)
    k = correction.correct(300, 0.3, lambda k: k, lambda k: k / n, n)
    if not confirm:
        assert k == 300 and len(correction.corrections) == 1
        return
    assert k != 300 and abs(k / n - 0.3) <= correction.tolerance, correction.corrections
    first, second = correction.corrections[:2]
    assert (first["measured"], second["measured"], second.get("confirming")) == pytest.approx((0.31, 0.37, True))
    assert correction.corrections[-1] == {"prefix": k, "predicted": k / n, "measured": k / n, "confirming": True}


def test_latency_target_run_records_requested_predicted_and_measured(run_cli, tiny_digits, tmp_path, one_thread):
    code, out, err = run_cli(
        "run",
        *tiny_digits,
        "method=l1",
        "prune.target=latency",
        "prune.latency_reduction=0.1",
        "measure.target_batch=64",
        "measure.batch_sizes=[1]",
        "threads=1",
        "--json",
    )
    assert code == 0, err
    s = last_json(out)
    assert s["target"] == "latency" and s["latency_reduction_requested"] == 0.1 and s["latency_target_batch"] == 64
    assert "b64" in s["latency"] and "b1" in s["latency"]  # the target batch is measured even if not listed
    assert s["latency_reduction_measured"] == pytest.approx(1 - 1 / s["latency"]["b64"]["speedup"])
    # the table's prediction for the chosen network is recorded; its sign is not asserted: on a loaded
    # 2-core machine a table of a tiny net can time a narrower layer slower than a wider one
    assert -1 < s["latency_reduction_predicted"] < 1 and s["latency_corrections"]
    assert s["flops_reduction"] > 0
    tables = list((tmp_path / "results" / "latency_tables").glob("*-b64-*.json"))
    assert len(tables) == 1 and json.loads(tables[0].read_text())["meta"]["batch"] == 64
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}").get_run(s["mlflow_run_id"])
    for key in (
        "latency_reduction_requested",
        "latency_reduction_predicted",
        "latency_reduction_measured",
        "latency_table/calibration_max_rel_error",
    ):
        assert key in run.data.metrics, key
    assert run.data.params["prune.target"] == "latency"
    # which layers hold the remaining latency: five, largest first, shares of the whole pruned time
    top = s["latency_top_layers"]
    assert len(top) == 5 and [h["share"] for h in top] == sorted((h["share"] for h in top), reverse=True)
    assert all(0 < h["share"] < 1 for h in top) and top[0]["layer"] in run.data.tags["latency_top_layers"]
    # compare keeps a latency target apart from MACs targets and shows what was measured
    code, out, err = run_cli("compare", f"results_dir={tmp_path / 'results'}")
    assert code == 0, err
    assert "latency b64" in out and "latency ↓ % measured" in out


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["prune.target=latency"], "prune.target=latency needs prune.latency_reduction"),
        (["prune.target=speed"], "prune.target must be one of macs, latency"),
        (["prune.target=latency", "prune.latency_reduction=1.5"], "prune.latency_reduction must be a number in (0, 1)"),
        (
            ["prune.target=latency", "prune.latency_reduction=0.99", "measure.target_batch=2"],
            "prune.latency_reduction=0.99 is unreachable",
        ),
    ],
)
def test_bad_latency_targets_are_one_line_errors(run_cli, tiny_digits, overrides, needle):
    code, _, err = run_cli("run", *tiny_digits, "method=l1", *overrides)
    assert code == 2 and needle in err and "Traceback" not in err


# The stand-in device's latency cut per MACs cut. The digits table, timed for real, predicts 0.4-1.4 by the
# machine's load, so whether its own stopping point misses cannot be fixed here (the unit tests of the
# correction construct their misses); at 1.5 it mostly overshoots, and the finish has to give channels back.
STEADY_SHARE = 1.5


@pytest.fixture
def steady_device(monkeypatch):
    """The measurements the finish searches on, from a stand-in device: a candidate's latency reduction is
    exactly ``STEADY_SHARE`` of its MACs reduction, a noiseless rule the lookup table does not know (its
    "timings" are each layer's MACs plus a constant, also noiseless: a table timed for real on a loaded
    machine can disagree with the stand-in so much that the knapsack's candidates stop being monotone in
    it), so the finish's wiring is tested apart from this machine's timing noise. On a loaded 2-core machine
    two real measurements of one digits net differ by up to ~20 points, more than any target check could
    allow; real timing is the benchmark's (benchmarks/latency_target_methods.py,
    results/bench/latency_target_methods.md)."""
    import harness.latency.table as table
    import harness.latency.target as target

    def measured(dense, pruned, x, **_):
        cut = 1 - count_macs_params(pruned, x[:1])[0] / count_macs_params(dense, x[:1])[0]
        return {"speedup": 1 / (1 - STEADY_SHARE * cut)}

    def table_timing(module, x, passes):  # the table's timings: MACs plus a constant per layer, noiseless
        return 1e-6 * count_macs_params(module, x[:1])[0] * x.shape[0] + 0.01

    monkeypatch.setattr(target, "paired_latency", measured)
    monkeypatch.setattr(table, "timed", table_timing)


def assert_finished_on_the_measurement(summary: dict, target: float, step: float = 0.015) -> None:
    """The run's search settled on a measurement within the correction's tolerance (0.02) plus one channel's
    ``step`` of ``target``, and the run's pruned network is the one measured: its MACs cut is
    what the stand-in device needs for that measurement. The run's final measurement is real, and recorded."""
    corrections = summary["latency_corrections"]
    settled = min(corrections, key=lambda c: abs(target - c["measured"]))
    assert abs(settled["measured"] - target) <= 0.02 + step, corrections
    assert summary["flops_reduction"] == pytest.approx(settled["measured"] / STEADY_SHARE, abs=1e-3), corrections
    assert summary["latency_reduction_measured"] == pytest.approx(1 - 1 / summary["latency"]["b64"]["speedup"])


def test_knapsack_and_latency_normalisation_meet_a_latency_target(run_cli, tiny_digits, one_thread, steady_device):
    code, out, err = run_cli(
        "run", *tiny_digits, "method=l1", "prune.target=latency",
        "prune.latency_reduction=0.2",
        "prune.allocation=knapsack", "prune.normalize=latency", "measure.target_batch=64",
        "measure.batch_sizes=[1]", "threads=1", "--json",
    )  # fmt: skip
    assert code == 0, err
    s = last_json(out)
    assert_finished_on_the_measurement(s, 0.2)
    assert s["latency_top_layers"]


# Methods that choose their widths by their own schedule, each at seconds-long digits settings.
OWN_SCHEDULES = {
    "gbn": [
        "method=gbn",
        "method.tick_p=0.05",
        "method.tock_every=2",
        "method.tock_epochs=1",
        "method.tick_samples=256",
    ],
    "gfp": ["method=gfp_cpu"],
    "scop": ["method=scop", "method.epochs=1"],
    "acp": ["method=acp", "method.particles=2", "method.cycles=0", "method.fitness_epochs=0", "data.val_fraction=0.1"],
}


@pytest.fixture(scope="module")
def shared_results(tmp_path_factory):
    """One results dir for the module's runs: the digits baseline and the latency table are built once."""
    return tmp_path_factory.mktemp("latency_finish")


@pytest.mark.parametrize("method", sorted(OWN_SCHEDULES))
def test_methods_with_their_own_schedule_finish_on_a_measured_latency(
    run_cli, shared_results, one_thread, steady_device, method
):
    """Gate Decorator, Group Fisher, SCOP and ACP stop on the lookup table's prediction; their last step is
    then corrected by paired measurements (harness.core.masks, ChannelPruner.finish, WidthSpace.finish)."""
    code, out, err = run_cli(
        "run", "task=digits", "train.epochs=2", "finetune.epochs=1", "measure.repeats=2", "measure.warmup=1",
        "measure.max_seconds=0", "quiet=true", f"results_dir={shared_results}", *OWN_SCHEDULES[method],
        "prune.target=latency", "prune.latency_reduction=0.2", "measure.target_batch=64", "measure.batch_sizes=[1]",
        "threads=1", "--json",
    )  # fmt: skip
    assert code == 0, err
    s = last_json(out)
    assert s["latency_corrections"], "the table's stopping point was not measured"
    assert_finished_on_the_measurement(s, 0.2)


def test_corrections_time_against_the_trained_baseline_the_final_measurement_uses(
    run_cli, tiny_digits, monkeypatch, one_thread
):
    """The table is built before the baseline trains, on an untrained copy; the corrections at pruning time
    and the run's final measurement must compare with one and the same dense model, the trained baseline
    (an untrained VGG-16 timed 1% faster than its trained baseline here: a bias of its own)."""
    import harness.latency.target as target
    import harness.phases.measure

    seen = {"corrections": [], "final": []}
    paired, compare = target.paired_latency, harness.phases.measure.compare_latency
    monkeypatch.setattr(
        target, "paired_latency", lambda dense, *a, **k: seen["corrections"].append(dense) or paired(dense, *a, **k)
    )
    monkeypatch.setattr(
        harness.phases.measure,
        "compare_latency",
        lambda dense, *a, **k: seen["final"].append(dense) or compare(dense, *a, **k),
    )
    code, out, err = run_cli(
        "run", *tiny_digits, "method=l1", "prune.target=latency", "prune.latency_reduction=0.2",
        "measure.target_batch=64", "measure.batch_sizes=[1]", "threads=1", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert seen["corrections"] and len(seen["final"]) == 1
    assert all(dense is seen["final"][0] for dense in seen["corrections"])


def _measured_pruner(model, example, offset: float, target: float):
    """A pruner on MACs whose "measurement" is the MACs reduction plus ``offset``: the table errs by -offset."""
    from harness.core.surgery import MacsCost
    from harness.latency.target import Corrected

    pruner = ChannelPruner(model, example, [model.fc])
    cost = Corrected(MacsCost(), lambda m: pruner.reduction(m) + offset, measured_from=target)
    pruner.use_cost(cost, model)
    return pruner, cost


@pytest.mark.quick
def test_a_masking_schedule_finishes_on_the_measurement_and_unmasks_when_it_overshot():
    from harness.core.masks import ChannelMasks

    class Masks(ChannelMasks):  # no hooks: only the bookkeeping and the finish are under test
        def attach(self):
            pass

        def detach(self):
            pass

    model, example = Net().eval(), torch.randn(1, 3, 16, 16)
    pruner, cost = _measured_pruner(model, example, offset=0.2, target=0.5)  # measured = MACs cut + 0.2
    groups = pruner.groups(model)
    masks = Masks(model, {k: torch.ones(g.channels) for k, g in groups.items()})
    order = pruner.removal_order(model, lambda g: torch.arange(len(g[0].idxs), dtype=torch.float))
    masks.step(pruner, order, 40, 0.5)  # an earlier tick: 40 channels, a 0.43 cut on the cost
    assert not masks.finished and len(masks.masked_channels()) == 40 and not cost.corrections
    earlier = masks.masked_channels()
    rest = [c for c in order if c not in set(earlier)]
    masks.step(pruner, rest, 40, 0.5)  # the tick that reaches 0.5 on the cost: 0.7 measured
    assert masks.finished and cost.corrections
    final = masks.masked_channels()
    assert abs(pruner.reduction(masks.vanilla(pruner)) + 0.2 - 0.5) <= cost.tolerance + 0.03
    assert len(final) < 40 and final == earlier[: len(final)]  # back into the earlier tick, in masking order


@pytest.mark.quick
def test_scaled_widths_finish_on_the_measurement():
    from harness.core.widths import WidthSpace

    model, example = Net().eval(), torch.randn(1, 3, 16, 16)
    pruner, cost = _measured_pruner(model, example, offset=-0.15, target=0.3)  # the table over-predicts
    space = WidthSpace(model, pruner)
    widths = space.repair(tuple(space.high), 0.3)  # met on the cost: 0.15 short on the measurement
    finished = space.finish(widths, 0.3)
    assert cost.corrections and all(f <= w for f, w in zip(finished, widths)) and finished != widths
    assert abs(space.reduction(finished) - 0.15 - 0.3) <= cost.tolerance + 0.03


@pytest.mark.quick
def test_the_correction_learns_how_much_the_table_overstates_each_step():
    """A table that predicts twice the cut each channel makes (measured = half the MACs cut): aiming by the
    measured-per-predicted slope reaches the target at the third measurement (by the miss alone: the fifth)."""
    model, example = Net().eval(), torch.randn(1, 3, 16, 16)
    pruner, cost = _measured_pruner(model, example, offset=0.0, target=0.3)
    cost.measured_reduction = lambda m: 0.5 * pruner.reduction(m)
    pruned = pruner.prune_to_target(model, lambda g: torch.arange(len(g[0].idxs), dtype=torch.float), 0.3)
    assert abs(0.5 * pruner.reduction(pruned) - 0.3) <= cost.tolerance
    candidates = [c for c in cost.corrections if not c.get("confirming")]
    assert len(candidates) <= 3 and cost.corrections[-1]["confirming"], cost.corrections


@pytest.mark.quick
def test_a_noisy_measurement_never_sends_a_positive_target_back_to_the_dense_model():
    """Measurements that say every candidate overshoots (noise on a tiny network) aim the next prefix
    below the first; the empty prefix is never measured, since timing the dense model against itself is
    noise alone, and the run keeps a network that was actually pruned."""
    model, example = Net().eval(), torch.randn(1, 3, 16, 16)
    pruner, cost = _measured_pruner(model, example, offset=0.0, target=0.1)
    cost.measured_reduction = lambda m: 0.1 if pruner.reduction(m) == 0 else 0.6  # noise: "dense meets it"
    pruned = pruner.prune_to_target(model, lambda g: torch.arange(len(g[0].idxs), dtype=torch.float), 0.1)
    assert all(c["prefix"] >= 1 for c in cost.corrections), cost.corrections
    assert pruner.reduction(pruned) > 0


class Plain(nn.Module):
    """Two 3x3 convolutions at 8x8 of a given width: a narrow and a wide one share their layer shapes."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


@pytest.mark.quick
def test_a_wider_model_widens_the_grid_a_narrower_one_timed(tmp_path, one_thread):
    """A layer shape timed for a narrow model is looked up for a wider one within timed points, never
    extrapolated past the narrow grid's top; the narrow model's points stay as they were."""
    example = torch.randn(1, 3, 8, 8)
    narrow, wide = Plain(8).eval(), Plain(40).eval()
    table = LatencyTable(4, torch.device("cpu"), tmp_path)
    table.prepare(narrow, example, lambda: [])
    shape = layers_of(narrow, example)[1][0]
    before = json.loads(json.dumps(table.data["layers"][shape.key()]))
    assert before["in"][-1] == 8 and before["out"][-1] == 8
    again = LatencyTable(4, torch.device("cpu"), tmp_path)
    again.prepare(wide, example, lambda: [])
    entry = again.data["layers"][shape.key()]
    assert entry["in"][-1] == 40 and entry["out"][-1] == 40 and 24 in entry["in"]
    assert again._lookup(shape, 40, 40) == pytest.approx(entry["ms"][-1][-1])  # a timed point
    for i, row in zip(before["in"], before["ms"]):
        for o, ms in zip(before["out"], row):
            assert entry["ms"][entry["in"].index(i)][entry["out"].index(o)] == ms
    assert entry["step"] == before["step"]  # probed once: the lines fitted with it stay valid
    # The narrow model's cached line was fitted on the same timings: it is reused, not refitted.
    third = LatencyTable(4, torch.device("cpu"), tmp_path)
    assert third.prepare(narrow, example, lambda: pytest.fail("refitted")) == table.line


def test_a_methods_own_checks_run_on_the_latency_table_before_training(run_cli, shared_results, one_thread):
    """MetaPruning's window is checked on the predicted latency (it used to be skipped for latency targets and
    the search drew for hours): widths 0.9-1.0 cannot cut 30% of the latency (the per-layer
    minimums reach about 50%), refused before the baseline."""
    code, _, err = run_cli(
        "run", "task=digits", "method=metapruning", "method.grid=[0.9,1.0]", "prune.target=latency",
        "prune.latency_reduction=0.3", "measure.target_batch=64", "measure.batch_sizes=[1]", "threads=1",
        f"results_dir={shared_results}", "tracking=none", "train.epochs=1000", "quiet=true",
    )  # fmt: skip
    assert code == 2 and "metapruning: none of" in err and "window" in err, err
    assert len(err.strip().splitlines()) == 1, err
