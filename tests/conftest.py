import json
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", module="sqlalchemy")


@pytest.fixture(autouse=True, scope="session")
def own_latency_gate(tmp_path_factory):
    """The suite's runs pause for each other's latency timings (harness.latency.gate), not for work that
    shares the machine with the suite: their lock files live in the suite's own folder (subprocesses too)."""
    import os

    saved = os.environ.get("HARNESS_GATE_DIR")
    os.environ["HARNESS_GATE_DIR"] = str(tmp_path_factory.mktemp("latency-gate"))
    yield
    if saved is None:
        os.environ.pop("HARNESS_GATE_DIR", None)
    else:
        os.environ["HARNESS_GATE_DIR"] = saved


@pytest.fixture
def run_cli(capsys):
    """Run ``python -m harness`` in-process; returns (exit code, stdout, stderr)."""
    from harness.cli import main

    def _run(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


@pytest.fixture
def one_thread():
    """Time on one thread: a parallel region stalls for whole scheduler slices on a loaded machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def tiny_digits(tmp_path):
    """Overrides for a seconds-long digits run with everything under tmp_path."""
    return [
        "task=digits",
        "train.epochs=2",
        "finetune.epochs=1",
        "measure.repeats=2",
        "measure.warmup=1",
        "measure.max_seconds=0",
        "quiet=true",
        f"results_dir={tmp_path / 'results'}",
    ]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])
