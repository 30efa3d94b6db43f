import json
import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", module="sqlalchemy")

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # the cores shared out among the workers (and their subprocesses)
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True, scope="session")
def own_latency_gate(tmp_path_factory):
    """The suite's runs pause for each other's latency timings (harness.core.gate), not for work that
    shares the machine with the suite: their lock files live in the suite's own folder (subprocesses too)."""
    saved = os.environ.get("HARNESS_GATE_DIR")
    os.environ["HARNESS_GATE_DIR"] = str(tmp_path_factory.mktemp("latency-gate"))
    yield
    if saved is None:
        os.environ.pop("HARNESS_GATE_DIR", None)
    else:
        os.environ["HARNESS_GATE_DIR"] = saved


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (the README's ``-n 2 --dist loadgroup``): the SLURM tests share one worker, since
    the local controller's one node runs their jobs one or two at a time and their deadlines assume so.
    The tests of the PostgreSQL-backed server join them (one of them submits a SLURM job): its fixture is
    module-scoped, and tests split over two workers would start the database and server twice (~45 s each)."""
    for item in items:
        if "slurm" in item.nodeid or "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(autouse=True)
def share_the_machine(request, tmp_path_factory):
    """Under pytest-xdist, a test marked ``timing`` runs while no other worker's test does (it takes a
    lock exclusively that every other test holds shared), so that its timings see the machine as a lone
    run does. A turnstile keeps the other workers' next tests from starving it."""
    import fcntl

    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    root = tmp_path_factory.getbasetemp().parent  # shared by the session's workers
    exclusive = request.node.get_closest_marker("timing") is not None
    with open(root / "turnstile.lock", "a") as turnstile, open(root / "machine.lock", "a") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if exclusive:
            fcntl.flock(machine, fcntl.LOCK_EX)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(machine, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)


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
