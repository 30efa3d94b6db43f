"""``python -m harness export <run id | pruned_model.pt> format=onnx|torchscript|pt [out=PATH] [key=value ...]``

Exports a pruned model for inference. For ``onnx`` and ``torchscript`` every BatchNorm is first folded
into the convolution before it (torch.fx's conv-bn fusion), then the model is traced (TorchScript) or
exported (ONNX), loaded back from the file and checked against the eager, unfolded model on a random
batch: the largest absolute difference of the outputs is printed, and above ``tolerance`` the export
fails (exit 7) and the file is deleted. ``pt`` writes the harness's own pruned-model file (widths and a
plain state_dict, BN not folded: for reloading and fine-tuning with ``harness.artifacts.load_pruned``,
``weights_only=True``), checked the same way.

The source is a ``pruned_model.pt`` a run saved, or an MLflow run id: then the run's model artifact is
fetched from the store (``tracking.uri=`` or ``results_dir=``, as for ``compare``) and the exported
file is logged back to that run under ``export/``, with the measured difference as a metric.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from harness.artifacts import fetch_pruned, input_shape, load_pruned, model_from_payload, read_payload, save_pruned
from harness.core.errors import ConfigError, HarnessError

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt": ".pt"}
OPTIONS = {
    "format": None,
    "out": None,
    "tolerance": "1e-3",
    "batch": "2",
    "tracking.uri": None,
    "results_dir": "results",
    "fold_bn": "true",
}


class ExportError(HarnessError):
    """The exported model does not compute what the eager one does, or could not be written."""

    exit_code = 7


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every BatchNorm that follows a convolution folded into it,
    and how many were folded. Uses torch.fx, so the model must be symbolically traceable."""
    from torch.fx.experimental.optimization import fuse

    before = _count_norms(model)
    try:
        folded = fuse(copy.deepcopy(model).eval())
    except Exception as e:  # torch.fx cannot trace data-dependent control flow
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot fold BatchNorm: torch.fx could not trace {type(model).__name__} ({detail}); "
            "export with fold_bn=false"
        ) from None
    return folded, before - _count_norms(folded)


def _count_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def write(model: nn.Module, example: torch.Tensor, fmt: str, out: Path, spec: dict | None = None) -> callable:
    """Write ``model`` to ``out`` in ``fmt``; return a function that runs the file's model on a tensor."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still what C++ and mobile load
            torch.jit.save(torch.jit.trace(model, example), str(out))
            loaded = torch.jit.load(str(out), map_location="cpu").eval()
        return lambda x: loaded(x)
    if fmt == "onnx":
        return _write_onnx(model, example, out)
    if fmt == "pt":
        save_pruned(model, spec, out)
        loaded = load_pruned(out)
        return lambda x: loaded(x)
    raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _write_onnx(model: nn.Module, example: torch.Tensor, out: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("format=onnx needs onnx and onnxruntime: pip install -e '.[dev]'") from None
    batch = torch.export.Dim("batch", min=1)
    try:  # the dynamo exporter (onnxscript), one self-contained file, any batch size
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            torch.onnx.export(
                model,
                (example,),
                str(out),
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=({0: batch},),
                input_names=["input"],
                output_names=["output"],
            )
    except Exception as e:
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def max_abs_difference(reference: nn.Module, exported, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected, got = reference(x), exported(x)
    if isinstance(expected, dict):  # segmentation models return {"out": ...}
        expected = expected["out"]
    if isinstance(got, dict):
        got = got["out"]
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(
            f"the exported model's output has shape {tuple(got.shape)}, the eager one's {tuple(expected.shape)}"
        )
    return float((got.float() - expected.float()).abs().max())


def export_command(args) -> int:
    from harness.config import parse_options

    opts = parse_options("export", OPTIONS, args.overrides)
    fmt = opts["format"]
    if fmt not in FORMATS:
        raise ConfigError(f"export needs format=onnx, format=torchscript or format=pt, got {fmt!r}")
    try:
        tolerance, batch = float(opts["tolerance"]), int(opts["batch"])
    except ValueError:
        raise ConfigError(
            f"tolerance must be a number and batch an integer, got {opts['tolerance']!r}, {opts['batch']!r}"
        ) from None
    if not (tolerance >= 0 and 1 <= batch <= 4096):
        raise ConfigError(f"tolerance must be >= 0 and batch in [1, 4096], got {tolerance}, {batch}")

    with tempfile.TemporaryDirectory() as tmp:
        path, run_id, uri = fetch_pruned(args.source, opts["tracking.uri"], opts["results_dir"], Path(tmp))
        payload = read_payload(path)
        shape = input_shape(payload, path)
        model = model_from_payload(payload).eval()
        out = (
            Path(opts["out"])
            if opts["out"]
            else _default_out(args.source, path, run_id, fmt, Path(opts["results_dir"]))
        )
        if out.resolve() == Path(path).resolve():
            raise ConfigError(f"out={out} is the source file; choose another out=")
        folded, n = model, 0
        if fmt != "pt" and opts["fold_bn"].lower() == "true":
            folded, n = fold_batchnorm(model)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=gen)
        try:
            exported = write(folded, x, fmt, out, payload["spec"])
            # On the batch it was traced with, and on another batch size (the file must take any).
            other = torch.randn(batch + 1, *shape, generator=gen)
            diff = max(max_abs_difference(model, exported, x), max_abs_difference(model, exported, other))
        except ExportError:
            out.unlink(missing_ok=True)
            raise
        print(
            f"{fmt}: {out} ({out.stat().st_size / 1e6:.2f} MB); BatchNorm layers folded into convolutions: {n}; "
            f"max |exported - eager| on random batches of {batch} and {batch + 1}: {diff:.3g} (tolerance {tolerance:g})"
        )
        if not diff <= tolerance:
            out.unlink(missing_ok=True)
            raise ExportError(
                f"the exported model differs from the eager one by {diff:.3g} > tolerance={tolerance:g}; "
                "the file was not kept"
            )
        if run_id:
            _log_to_run(uri, run_id, out, fmt, diff)
            print(f"logged to MLflow run {run_id} as export/{out.name}")
    return 0


def _default_out(source: str, path: Path, run_id: str | None, fmt: str, results_dir: Path) -> Path:
    if run_id:
        return results_dir / "exports" / run_id / f"pruned_model{FORMATS[fmt]}"
    stem = path.name.removesuffix(".pt")
    return path.with_name(f"{stem}{'.export' if fmt == 'pt' else ''}{FORMATS[fmt]}")


def _log_to_run(uri: str, run_id: str, out: Path, fmt: str, diff: float) -> None:
    from harness.tracking import open_store

    open_store(uri).log_to_run(run_id, {"export": out}, {f"export/{fmt}_max_abs_diff": diff})
