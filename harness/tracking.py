"""Experiment tracking. MLflow is imported lazily, so ``tracking=none`` never loads it.

The default store is an embedded sqlite database, ``sqlite:///<results_dir>/mlflow.db``, with
artifacts under ``<results_dir>/mlruns``; ``tracking.uri=`` or ``$MLFLOW_TRACKING_URI`` points
elsewhere (another file, or a tracking server).
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_PARAM_LIMIT = 6000  # MLflow's longest param value


class NullTracker:
    """Records nothing; used with ``tracking=none``."""
    run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, uri: str, experiment: str, artifact_root: Path):
        for noisy in ("mlflow", "alembic"):  # schema-creation chatter would break one-line errors
            logging.getLogger(noisy).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="sqlalchemy")
        warnings.filterwarnings("ignore", message=".*SADeprecationWarning.*")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_root.resolve().as_uri() if uri.startswith("sqlite") else None)
            except Exception:  # another process created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id
        self.run_id = None

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        run = self.client.create_run(self.experiment_id, tags=tags, run_name=tags.get("mlflow.runName"))
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:_PARAM_LIMIT]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path, artifact_path=None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v)[:5000])

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if self.run_id is None:
            return
        if reason:
            self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status=status)


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(cfg.results_dir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def make_tracker(cfg: DictConfig) -> NullTracker:
    if not cfg.tracking.enabled:
        return NullTracker()
    return MlflowTracker(tracking_uri(cfg), cfg.tracking.experiment, Path(cfg.results_dir) / "mlruns")


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """{'prune.flops_reduction': 0.5, ...}: the whole config as MLflow params."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out
