"""The run as phases (harness/phases/): a run stopped at any phase boundary and run again ends as one that
went through, bit for bit."""

import pytest
import torch

from tests.conftest import last_json


def _result(out: str) -> dict:
    from harness.artifacts import read_payload, state_digest

    summary = last_json(out)
    keep = ("base_acc", "pruned_acc", "final_acc", "base_macs", "final_macs", "final_params", "channels")
    return {
        **{k: summary[k] for k in keep},
        "prune_epochs": summary["prune_epochs"],
        "weights": state_digest(read_payload(summary["model_artifact"])["state_dict"]),
    }


def test_a_run_stopped_at_each_phase_boundary_resumes_to_the_same_result(
    run_cli, tiny_digits, tmp_path, monkeypatch, one_thread
):
    import harness.phases

    phases = harness.phases.PHASES
    args = [o for o in tiny_digits if not o.startswith("results_dir=")]
    args += ["method=l1", "prune.flops_reduction=0.4", "tracking=none", "threads=1", "--json"]
    code, out, err = run_cli("run", *args, f"results_dir={tmp_path / 'through'}")
    assert code == 0, err
    through = _result(out)

    def stop(run):
        raise KeyboardInterrupt

    # the checkpoint a stop before each phase leaves: before pruning, only the baseline (cached) is kept
    stages = {"prune": "start", "finetune": "pruned", "measure": "finetune", "record": "finetune"}
    for index, phase in enumerate(phases[1:], start=1):
        results = tmp_path / phase.__name__
        monkeypatch.setattr(harness.phases, "PHASES", phases[:index] + (stop,) + phases[index + 1 :])
        code, _, _ = run_cli("run", *args, f"results_dir={results}")
        assert code == 130  # stopped as a kill stops it, after the phase before
        (checkpoint,) = (results / "checkpoints").glob("*.pt")
        assert torch.load(checkpoint, weights_only=True)["stage"] == stages[phase.__name__]
        monkeypatch.setattr(harness.phases, "PHASES", phases)
        code, out, err = run_cli("run", *args, f"results_dir={results}")
        assert code == 0, err
        assert _result(out) == through, phase.__name__


@pytest.mark.quick
def test_the_phases_run_in_order():
    import harness.phases

    assert [p.__name__ for p in harness.phases.PHASES] == ["baseline", "prune", "finetune", "measure", "record"]
    assert all(p.__module__ == f"harness.phases.{p.__name__}" for p in harness.phases.PHASES)  # one module each
