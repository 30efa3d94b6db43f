"""The MLflow server killed in the middle of a run and started again: every metric arrives once, in order."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(store: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "mlflow_server.sh"), str(store)],
        env={**os.environ, "PYTHON": sys.executable, "PORT": str(port), "WORKERS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the MLflow server did not start in 90 s")


def _rows(db: Path, sql: str):
    try:
        with sqlite3.connect(db) as con:
            return con.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def test_server_restart_mid_run_loses_and_repeats_nothing(tmp_path):
    store, port = tmp_path / "server", _free_port()
    server = _start_server(store, port)
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "task=digits",
            "method=l1",
            f"train.epochs={EPOCHS}",
            "finetune.epochs=3",
            "measure.repeats=1",
            "measure.warmup=0",
            "measure.max_seconds=0",
            "measure.batch_sizes=[1]",
            "threads=1",
            f"tracking.uri=http://127.0.0.1:{port}",
            f"results_dir={tmp_path / 'results'}",
            "quiet=true",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        db = store / "mlflow.db"
        deadline = time.time() + 120
        while time.time() < deadline and not _rows(db, "select 1 from metrics where key = 'baseline/acc'"):
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGTERM)  # mid-baseline
        server.wait(30)
        buffer = tmp_path / "results" / "tracking_buffer"
        deadline = time.time() + 60
        while time.time() < deadline and not list(buffer.glob("*.jsonl")):
            time.sleep(0.05)  # training goes on; the run notices the outage at its next record
        # Hold the run while the server restarts (seconds), so it does not reach its end first.
        run.send_signal(signal.SIGSTOP)
        try:
            server = _start_server(store, port)
        finally:
            run.send_signal(signal.SIGCONT)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "failed" in err and "records are kept in" in err  # the outage was noticed, records buffered
        assert not list(buffer.glob("*.jsonl"))  # and, all taken after the restart, the buffer file removed
    finally:
        run.kill()
        os.killpg(server.pid, signal.SIGTERM)
    steps = _rows(db, "select step from metrics where key = 'baseline/acc' order by timestamp, step")
    assert [s for (s,) in steps] == list(range(EPOCHS))  # each epoch once, in order
    assert not _rows(db, "select key, step, count(*) from metrics group by key, step having count(*) > 1")
    assert _rows(db, "select status from runs") == [("FINISHED",)]
