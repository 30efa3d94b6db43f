"""The paired latency measurement: its interval comes from real repeated timings, and runs record it.
(Speed itself is never asserted here: speed claims live in benchmarks/.)"""

from __future__ import annotations

import math

import pytest
import torch

from harness.latency.measure import compare_latency, median_interval, paired_latency
from tasks.models import create_model
from tests.conftest import last_json

pytestmark = pytest.mark.quick  # the inner loop: pytest -m quick


def _binomial_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, j) for j in range(k + 1)) / 2**n


@pytest.mark.parametrize("n", [6, 7, 10, 20, 51, 200])
def test_median_interval_is_the_order_statistic_interval(n):
    values = [float(v) for v in range(n)][::-1]  # unsorted input
    lo, hi = median_interval(values)
    k = int(lo) + 1  # the k-th smallest value is k - 1
    assert hi == n - k  # symmetric: k-th from the top
    # The largest k whose tail stays within 2.5% on each side: coverage >= 95%, and k + 1 would break it.
    assert _binomial_cdf(k - 1, n) <= 0.025 < _binomial_cdf(k, n)


def test_median_interval_needs_six_values():
    assert median_interval([1.0] * 5) is None and median_interval([1.0] * 6) == (1.0, 1.0)


def test_paired_latency_reports_an_interval_from_the_pairs_it_timed():
    torch.manual_seed(0)
    dense, pruned = create_model("resnet20", 10).eval(), create_model("resnet8", 10).eval()
    r = paired_latency(dense, pruned, torch.randn(2, 3, 32, 32), warmup=1, min_pairs=8, max_seconds=3, interval=0.03)
    assert r["pairs"] >= 8 and r["passes_per_timing"] >= 1
    assert r["speedup_lo"] <= r["speedup"] <= r["speedup_hi"] and r["speedup_q1"] <= r["speedup"] <= r["speedup_q3"]
    half = max(r["speedup"] - r["speedup_lo"], r["speedup_hi"] - r["speedup"]) / r["speedup"]
    assert r["converged"] == (half <= 0.03)  # stopped because the interval was narrow enough, or at the cap
    assert r["converged"] or r["seconds"] >= 3
    # max_seconds=0: exactly min_pairs pairs, no more
    exact = paired_latency(dense, pruned, torch.randn(1, 3, 32, 32), warmup=0, min_pairs=7, max_seconds=0)
    assert exact["pairs"] == 7


def test_compare_latency_keeps_units_and_context():
    model = create_model("resnet8", 10).eval()
    out = compare_latency(
        model,
        model,
        lambda b: torch.randn(b, 3, 32, 32),
        [1, 3],
        torch.device("cpu"),
        warmup=0,
        repeats=6,
        max_seconds=0,
    )
    assert set(out) == {"b1", "b3"}
    assert all(r["threads"] == torch.get_num_threads() and r["device"].startswith("cpu:") for r in out.values())


def test_a_run_records_the_speedup_interval_in_json_and_mlflow(run_cli, tiny_digits, tmp_path):
    from mlflow.tracking import MlflowClient

    overrides = [o for o in tiny_digits if not o.startswith("measure.")]
    code, out, err = run_cli(
        "run", *overrides, "measure.repeats=6", "measure.max_seconds=1", "measure.batch_sizes=[1]", "--json"
    )
    assert code == 0, err
    lat = last_json(out)["latency"]["b1"]
    assert lat["pairs"] >= 6 and lat["speedup_lo"] <= lat["speedup"] <= lat["speedup_hi"]
    run = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}").get_run(last_json(out)["mlflow_run_id"])
    for k in ("speedup", "speedup_lo", "speedup_hi", "speedup_q1", "speedup_q3", "pairs"):
        assert run.data.metrics[f"latency/b1/{k}"] == pytest.approx(lat[k])
    code, out, _ = run_cli("compare", f"results_dir={tmp_path / 'results'}", "--no-log")
    assert code == 0 and "speed-up b1 95%" in out and f"[{lat['speedup_lo']:.2f}, {lat['speedup_hi']:.2f}]" in out
