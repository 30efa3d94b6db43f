"""Phase 5: the pruned model saved (widths + weights; reload with harness.artifacts.load_pruned) as the
MLflow run's artifact, or under ``<results_dir>/runs/`` with tracking off; the run's summary completed.
A run that stops on an error or a signal is recorded FAILED or KILLED with the reason (``record_end``)."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path

from harness.artifacts import save_pruned
from harness.core import distributed
from harness.core.errors import Terminated
from harness.phases.state import RunState


def record(run: RunState) -> None:
    run.summary["model_artifact"] = save_model(run) if distributed.is_main() else None
    run.summary["mlflow_run_id"] = run.tracker.run_id
    distributed.barrier()


def save_model(run: RunState) -> str:
    cfg, task, tracker = run.cfg, run.task, run.tracker
    with tempfile.TemporaryDirectory() as tmp:
        unique = f"{time.strftime('%Y%m%d-%H%M%S')}-{task.name}-{cfg.method.name}-s{cfg.seed}-{uuid.uuid4().hex[:6]}"
        out_dir = Path(tmp) if tracker.run_id else Path(cfg.results_dir) / "runs" / unique
        path = out_dir / "pruned_model.pt"
        save_pruned(run.model.cpu(), task.model_spec(), path)
        (out_dir / "channels.json").write_text(json.dumps(run.summary["channels"], indent=1))
        if not tracker.run_id:
            return str(path)
        tracker.log_artifact(path, "model")
        tracker.log_artifact(out_dir / "channels.json", "model")
        return "model/pruned_model.pt"


def record_end(tracker, e: BaseException) -> None:
    """Mark the run KILLED or FAILED with the reason, even if a signal lands meanwhile: torchrun SIGTERMs
    the survivors of a dead rank just as their next collective fails, and Python runs that signal's
    handler at the first line of the error path (the caller retries). SIGTERM is held back while recording.

    A SIGTERM under data parallelism is a cancelled job (KILLED) only if every rank got it; torchrun also
    sends it to the survivors of a rank that died, and that run FAILED (``distributed.all_ranks_stopping``)."""
    with _sigterm_deferred():
        peer_gone = isinstance(e, Terminated) and not distributed.all_ranks_stopping()
        killed = isinstance(e, (KeyboardInterrupt, SystemExit)) and not peer_gone
        tracker.end("KILLED" if killed else "FAILED", reason=distributed.failure_reason(e, peer_gone=peer_gone))


@contextlib.contextmanager
def _sigterm_deferred():
    """Hold SIGTERM back (it is delivered on exit from the block) where a run records its end."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
