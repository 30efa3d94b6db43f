"""``python -m harness retime``: pruned models timed together with their dense original, in interleaved rounds."""

import contextlib
import io

import pytest
import torch

from tests.conftest import last_json

pytestmark = pytest.mark.xdist_group("retime")  # one worker builds the module's two runs, not each worker


class _Fake:
    """A 'model' whose timing is ``cost`` times the machine's current slowness (see _fake_clock)."""

    def __init__(self, name: str, cost: float, calls: list):
        self.name, self.cost, self.calls = name, cost, calls

    def __call__(self, x):
        return x


def test_interleaved_rounds_cancel_a_drift_of_the_machines_speed(monkeypatch):
    """The machine slows down 3x half-way (as a shared CPU does): every round times every model under the
    same slowness, so the per-round ratios, and their median, stay exact; the order rotates each round."""
    from harness.latency import measure

    calls: list[str] = []
    models = {"dense": _Fake("dense", 4.0, calls), "a": _Fake("a", 2.0, calls), "b": _Fake("b", 1.0, calls)}

    def fake_timed(model, x, passes):
        calls.append(model.name)
        slowness = 1.0 if len(calls) <= 3 * 5 else 3.0  # rounds 1-5 fast, then slow
        return model.cost * slowness

    monkeypatch.setattr(measure, "timed", fake_timed)
    monkeypatch.setattr(measure, "passes_for", lambda model, x: 1)
    out = measure.interleaved_latency(models, "dense", torch.zeros(1), warmup=0, min_rounds=10, max_seconds=0)
    assert out["a"]["speedup"] == 2.0 and (out["a"]["speedup_lo"], out["a"]["speedup_hi"]) == (2.0, 2.0)
    assert out["b"]["speedup"] == 4.0 and out["dense"]["speedup"] == 1.0
    assert out["a"]["rounds"] == 10 and out["a"]["converged"]
    assert calls[:6] == ["dense", "a", "b", "a", "b", "dense"]  # round 2 starts one model later
    # Timed apart instead (a in the fast rounds, b in the slow ones), b would read 4/3 times faster than a, not 2.
    assert out["a"]["ms"] == 4.0 and out["b"]["ms"] == 2.0  # medians over the fast and the slow rounds


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny digits runs (l1 at 30% and 60% MACs, one shared baseline): (results folder, [run ids])."""
    from harness.cli import main

    results = tmp_path_factory.mktemp("retime") / "results"
    ids = []
    for target in (0.3, 0.6):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(
                ["run", "task=digits", "method=l1", f"prune.flops_reduction={target}", "train.epochs=1",
                 "finetune.epochs=1", "measure.batch_sizes=[1]", "measure.repeats=2", "measure.warmup=1",
                 "measure.max_seconds=0", "quiet=true", "threads=1", f"results_dir={results}", "--json"]
            )  # fmt: skip
        assert code == 0
        ids.append(last_json(out.getvalue())["mlflow_run_id"])
    return results, ids


def test_retime_of_two_runs_logs_comparable_figures_to_both(run_cli, two_runs, tmp_path):
    results, ids = two_runs
    code, out, err = run_cli(
        "retime", *ids, f"results_dir={results}", "batch=8,32", "seconds=2", "min_rounds=6", f"out={tmp_path}"
    )
    assert code == 0, err
    assert "| 8 | dense |" in out and "| 32 | dense |" in out and all(f"| 32 | {i} |" in out for i in ids)
    assert (tmp_path / "retime.md").read_text() in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    for run_id, other in (ids, ids[::-1]):
        run = client.get_run(run_id)
        m = run.data.metrics
        assert m["retime/b32/rounds"] >= 6 and m["retime/b8/rounds"] >= 6
        assert m["retime/b32/reduction"] == pytest.approx(1 - 1 / m["retime/b32/speedup"])
        assert m["retime/b32/speedup_lo"] <= m["retime/b32/speedup"] <= m["retime/b32/speedup_hi"]
        assert m["retime/b32/ms"] > 0 and m["retime/b32/dense_ms"] > 0
        assert run.data.tags["retime/b32/with"] == other
        assert {a.path for a in client.list_artifacts(run_id, "retime")} == {"retime/retime.md"}


def test_retime_bad_input_is_one_line_exit_2(run_cli, two_runs, tmp_path):
    results, ids = two_runs
    (model,) = [p for p in (results / "mlruns").rglob("pruned_model.pt") if ids[0] in str(p)]
    other = torch.load(model, weights_only=True)
    other["spec"]["num_classes"] = 5
    torch.save(other, tmp_path / "other.pt")
    for args, needle in (
        ([ids[0], str(tmp_path / "other.pt")], "one dense architecture"),
        ([ids[0], "batch=0"], "batch must be"),
        ([ids[0], "secnods=3"], "did you mean 'seconds'"),
        (["batch=8"], "needs the models"),
        ([ids[0], ids[0]], "named twice"),
        (["0" * 32], "run id"),
        ([ids[0], "missing=maybe"], "missing must be fail or skip"),
        (["0" * 32, "missing=skip"], "none of the models"),
    ):
        code, out, err = run_cli("retime", *args, f"results_dir={results}")
        assert code == 2 and err.strip().splitlines()[-1].count(needle) == 1, (args, err)
        assert err.count("\n") == 1 or "missing=skip" in args, (args, err)


def test_retime_with_missing_skip_times_the_models_it_has(run_cli, two_runs):
    results, ids = two_runs
    gone = "0" * 32
    args = [ids[0], gone, "missing=skip", "batch=4", "seconds=1", "min_rounds=6", "log=false"]
    code, out, err = run_cli("retime", *args, f"results_dir={results}")
    assert code == 0, err
    assert f"| 4 | {ids[0]} |" in out and gone not in out and "skipped (missing=skip)" in err and gone in err
