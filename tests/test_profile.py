"""``python -m harness profile``: per-layer time of a run's pruned model and its dense original."""

import json

import pytest

from tests.conftest import last_json

pytestmark = pytest.mark.xdist_group("profile")  # one worker builds the module's run, not each


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One tiny digits run (l1, 50% MACs) recorded in MLflow: (results folder, run id)."""
    from harness.cli import main

    results = tmp_path_factory.mktemp("profile") / "results"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["run", "task=digits", "method=l1", "prune.flops_reduction=0.5", "train.epochs=1", "finetune.epochs=1",
             "measure.batch_sizes=[1]", "measure.repeats=2", "measure.warmup=1", "measure.max_seconds=0",
             "quiet=true", "threads=1", f"results_dir={results}", "--json"]
        )  # fmt: skip
    assert code == 0
    return results, last_json(out.getvalue())["mlflow_run_id"]


@pytest.mark.timing  # its timings want the machine to itself (tests/conftest.py)
def test_profile_of_a_run_writes_the_table_and_chart_and_logs_them(run_cli, digits_run):
    results, run_id = digits_run
    code, out, err = run_cli("profile", run_id, f"results_dir={results}", "batch=64", "threads=1", "passes=15")
    assert code == 0, err
    folder = results / "profiles" / run_id
    text = (folder / "profile.md").read_text()
    assert "unattributed" in text and "batchnorm (fixed per layer)" in text and "MACs pruned/dense" in text
    assert (folder / "profile.png").stat().st_size > 10_000
    p = json.loads((folder / "profile.json").read_text())
    assert p["batch"] == 64 and p["threads"] == 1 and p["unit"] == "ms per batch"
    # The parts add up to the whole model, timed without hooks: within 50%, which still catches a part
    # counted twice or a unit slip (per pass vs per batch); on CI's loaded 2 cores the two timings of one
    # model were 26% apart (13.8 vs 10.9 ms), so a tighter bound would be a timed unit test.
    for side in ("dense", "pruned"):
        assert p[f"{side}_sum_ms"] == pytest.approx(p[f"{side}_whole_ms"], rel=0.5), p
    pruned = [layer for layer in p["layers"] if layer["kind"] == "conv"]
    assert pruned and all(layer["pruned_macs"] <= layer["dense_macs"] for layer in pruned)
    assert any(layer["pruned_macs"] < layer["dense_macs"] for layer in pruned)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(run_id, "profile")}
    assert logged == {"profile/profile.md", "profile/profile.png", "profile/profile.json"}
    assert "profile/b64_fixed_share" in client.get_run(run_id).data.metrics


def test_profile_of_a_file_writes_beside_it(run_cli, digits_run, tmp_path):
    results, run_id = digits_run
    (model,) = (results / "mlruns").rglob("pruned_model.pt")
    copy = tmp_path / "pruned_model.pt"
    copy.write_bytes(model.read_bytes())
    code, out, err = run_cli("profile", str(copy), "batch=8", "passes=3")
    assert code == 0, err
    assert (tmp_path / "pruned_model_profile" / "profile.md").is_file() and "logged to MLflow" not in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["batch=0"], "batch must be an integer in [1, 4096]"),
        (["threads=two"], "threads must be an integer"),
        (["passes=1"], "passes must be an integer in [3,"),
        (["device=tpu"], "device must be cpu or cuda"),
        (["bacth=4"], "unknown profile option 'bacth'"),
    ],
)
def test_profile_bad_values_exit_2_in_one_line(run_cli, digits_run, args, needle):
    results, run_id = digits_run
    code, out, err = run_cli("profile", run_id, f"results_dir={results}", *args)
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_profile_of_something_that_is_not_a_model(run_cli, tmp_path):
    code, _, err = run_cli("profile", "nope")
    assert code == 2 and "neither a file nor an MLflow run id" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run_cli("profile", str(junk))
    assert code != 0 and "not a pruned-model file" in err
