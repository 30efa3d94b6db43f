"""``harness export``: a run's pruned model to ONNX, TorchScript and the harness's .pt, checked against eager."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest
import torch

from tests.conftest import last_json


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny digits run with MLflow, pruned by half: (results dir, run id, its pruned_model.pt)."""
    from harness.cli import main

    results = tmp_path_factory.mktemp("export") / "results"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "run",
                "task=digits",
                "train.epochs=2",
                "finetune.epochs=1",
                "measure.repeats=2",
                "measure.max_seconds=0",
                "measure.warmup=1",
                "quiet=true",
                "method=l1",
                "prune.flops_reduction=0.5",
                f"results_dir={results}",
                "--json",
            ]
        )
    assert code == 0
    run_id = last_json(out.getvalue())["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    local = MlflowClient(f"sqlite:///{results / 'mlflow.db'}").download_artifacts(
        run_id, "model/pruned_model.pt", str(results)
    )
    return results, run_id, local


def _reported_difference(out: str) -> float:
    return float(re.search(r"max \|exported - eager\| on random batches of 2 and 3: (\S+)", out).group(1))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt"])
def test_export_from_a_run_id_round_trips_and_is_logged_to_the_run(run_cli, finished_run, fmt):
    from mlflow.tracking import MlflowClient

    from harness.artifacts import load_pruned

    results, run_id, source = finished_run
    code, out, err = run_cli("export", run_id, f"format={fmt}", f"results_dir={results}")
    assert code == 0, err
    assert _reported_difference(out) <= 1e-4
    suffix = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt": ".pt"}[fmt]
    path = results / "exports" / run_id / f"pruned_model{suffix}"
    folded = int(re.search(r"BatchNorm layers folded into convolutions: (\d+)", out).group(1))
    assert folded == (0 if fmt == "pt" else 6)  # the digits net's six conv + BN pairs
    # An independent check of the file: load it with its own runtime and compare with the eager model.
    eager = load_pruned(source)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = eager(x)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        assert not any(n.op_type == "BatchNormalization" for n in __import__("onnx").load(str(path)).graph.node)
    elif fmt == "torchscript":
        got = torch.jit.load(str(path))(x)
    else:
        got = load_pruned(path)(x)
    np.testing.assert_allclose(got.detach().numpy(), expected.numpy(), atol=1e-4)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    assert f"export/{path.name}" in [a.path for a in client.list_artifacts(run_id, "export")]
    assert client.get_run(run_id).data.metrics[f"export/{fmt}_max_abs_diff"] == pytest.approx(
        _reported_difference(out), rel=1e-2
    )


def test_an_export_beyond_tolerance_fails_loudly_and_keeps_no_file(run_cli, finished_run, tmp_path):
    results, run_id, source = finished_run
    out_file = tmp_path / "m.onnx"
    code, out, err = run_cli("export", source, "format=onnx", f"out={out_file}", "tolerance=1e-12")
    assert code == 7 and "differs from the eager one" in err and err.count("\n") == 1
    assert not out_file.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["format=tflite"], "format=onnx, format=torchscript or format=pt"),
        (["format=onnx", "tolerance=abc"], "tolerance must be a number"),
        (["format=onnx", "colour=red"], "export takes"),
    ],
)
def test_bad_export_options_are_one_line_exit_2(run_cli, finished_run, args, message):
    code, out, err = run_cli("export", finished_run[2], *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_an_unknown_source_is_one_line_exit_2(run_cli, tmp_path):
    code, out, err = run_cli("export", str(tmp_path / "nope.pt"), "format=onnx")
    assert code == 2 and "neither a file nor an MLflow run id" in err
    code, out, err = run_cli("export", "0" * 32, "format=onnx", f"results_dir={tmp_path}")
    assert code == 2 and "has no model/pruned_model.pt" in err, err
