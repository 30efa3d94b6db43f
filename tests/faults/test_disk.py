"""A full disk and corrupt checkpoints: what was already recorded is kept, and the run says what to do."""

import errno

import pytest
import torch

from tests.conftest import last_json

ARGS = ["method=l1", "finetune.epochs=3", "measure.batch_sizes=[1]"]


def _runs(results):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("target, nth", [("checkpoints", 4), ("baselines", 1), ("pruned_model.pt", 1)])
def test_disk_full_fails_the_run_and_keeps_the_previous_files(run_cli, tiny_digits, tmp_path, monkeypatch, target, nth):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        if target in str(f):
            calls.append(str(f))
            if len(calls) == nth:
                with open(f, "wb") as fh:
                    fh.write(b"half a file")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    code, out, err = run_cli("run", *tiny_digits, *ARGS)
    assert code == 6 and "No space left on device" in err and len(err.strip().splitlines()) == 1 and out == ""
    (run,) = _runs(tmp_path / "results")
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["failure_reason"]
    results = tmp_path / "results"
    assert not list(results.rglob(".*.tmp*"))  # no partial file left behind
    for path in results.rglob("*.pt*"):  # whatever is on disk loads: the previous checkpoint is intact
        torch.load(path, weights_only=True)
    if target == "checkpoints":
        (ckpt,) = (results / "checkpoints").glob("*.pt")
        assert torch.load(ckpt, weights_only=True)["stage"] == "finetune"  # the epoch before the failure
    monkeypatch.setattr(torch, "save", real_save)
    code, out, err = run_cli("run", *tiny_digits, *ARGS, "--json")  # space freed: the same command finishes
    assert code == 0, err
    assert last_json(out)["mlflow_run_id"] == (
        run.info.run_id if target != "baselines" else last_json(out)["mlflow_run_id"]
    )


def _kill_after_pruning(run_cli, tiny_digits, monkeypatch):
    """Run until the checkpoint after the first fine-tuning epoch exists, then stop (as a kill would)."""
    import harness.phases

    real = harness.phases.PHASES

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        harness.phases, "PHASES", tuple(stop if p is harness.phases.measure.measure else p for p in real)
    )
    code, _, _ = run_cli("run", *tiny_digits, *ARGS)
    monkeypatch.setattr(harness.phases, "PHASES", real)
    assert code == 130


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(run_cli, tiny_digits, tmp_path, monkeypatch):
    _kill_after_pruning(run_cli, tiny_digits, monkeypatch)
    folder = tmp_path / "results" / "checkpoints"
    (latest,) = folder.glob("*.pt")
    latest.write_bytes(latest.read_bytes()[:200])  # truncated
    code, out, err = run_cli("run", *tiny_digits, *ARGS, "--json")
    assert code == 0 and "is unreadable; resuming from the previous one" in err
    assert 0.5 <= last_json(out)["flops_reduction"] <= 0.53


def test_no_good_checkpoint_is_a_clear_error_naming_the_file_and_the_fix(run_cli, tiny_digits, tmp_path, monkeypatch):
    _kill_after_pruning(run_cli, tiny_digits, monkeypatch)
    folder = tmp_path / "results" / "checkpoints"
    for path in folder.iterdir():
        path.write_bytes(b"\x00garbage")
    code, _, err = run_cli("run", *tiny_digits, *ARGS)
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert str(next(folder.glob("*.pt"))) in err and "resume=false" in err
    code, _, err = run_cli("run", *tiny_digits, *ARGS, "resume=false", "measure.repeats=1")
    assert code == 0, err
