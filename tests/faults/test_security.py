"""Servers bind to this machine only unless told otherwise, and names from configs or the store never
pick a path outside their folder."""

import os
import re
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _server_args(tmp_path, **env):
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "mlflow_server.sh"), str(tmp_path / "results")],
        env={**os.environ, "PYTHON": str(fake), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_the_mlflow_server_binds_to_loopback_by_default(tmp_path):
    args = _server_args(tmp_path)
    assert args[args.index("--host") + 1] == "127.0.0.1"
    # only when told, and then with authentication (tests/test_tracking_server.py has the refusals)
    args = _server_args(tmp_path, HOST="0.0.0.0", MLFLOW_ADMIN_PASSWORD="x" * 12, STATE_DIR=str(tmp_path / "state"))
    assert args[args.index("--host") + 1] == "0.0.0.0" and "harness-auth" in args


def test_the_readme_only_shows_loopback_or_authenticated_servers():
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    cluster_commands = 0
    for line in readme.splitlines():
        if "mlflow ui" in line or "mlflow server" in line:
            assert "127.0.0.1" in line, line
        host = re.search(r"HOST=([\w.:-]+)", line)
        if "mlflow_server.sh" in line and host and host[1] not in ("127.0.0.1", "localhost"):
            assert "MLFLOW_ADMIN_PASSWORD" in line and "ALLOW_INSECURE" not in line, line
            cluster_commands += 1
    assert cluster_commands >= 1  # the docs give the authenticated cluster command


def test_experiment_names_cannot_name_a_path(run_cli, tmp_path):
    for name in ("../outside", "a/b", ".hidden", ""):
        code, _, err = run_cli("run", "task=digits", f"tracking.experiment={name}", f"results_dir={tmp_path}")
        assert code == 2 and "tracking.experiment must be a plain name" in err
        code, _, err = run_cli("compare", f"experiment={name}", f"results_dir={tmp_path}")
        assert code == 2 and "experiment must be a plain name" in err
    assert not list(tmp_path.iterdir())


def test_compare_writes_only_inside_out_whatever_the_task_is_called(run_cli, tmp_path):
    from harness.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for seed in (0, 1):
        t = MlflowTracker(uri, "harness", tmp_path / "mlruns")
        t.start(
            {"method.name": "l1", "prune.flops_reduction": 0.5, "seed": seed},
            {"task": "../../escaped", "method": "l1", "seed": seed},
        )
        t.log_metrics({"final_acc": 0.9, "base_acc": 0.95, "flops_reduction": 0.5, "params_reduction": 0.5})
        t.end()
    out = tmp_path / "deep" / "report"
    code, _, err = run_cli("compare", f"tracking.uri={uri}", "--out", str(out), "--no-log")
    assert code == 0, err
    assert {p.parent for p in out.rglob("*") if p.is_file()} == {out}
    assert not list(tmp_path.glob("*escaped*")) and not list((tmp_path / "deep").glob("*escaped*"))
