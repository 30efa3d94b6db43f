"""Experiment tracking, the one module that talks to MLflow (imported lazily, so ``tracking=none`` never
loads it). Writing: a ``Tracker`` per run (``MlflowTracker``, or ``NullTracker`` for ``tracking=none``).
Reading: ``open_store(uri)`` finds runs with their params and metrics, metric histories and artifacts, for
``compare``, ``report`` and ``export``.

The default store is an embedded sqlite database, ``sqlite:///<results_dir>/mlflow.db``, with
artifacts under ``<results_dir>/mlruns``; ``tracking.uri=`` or ``$MLFLOW_TRACKING_URI`` points
elsewhere (another file, or a tracking server). A server with authentication takes its credentials from
``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD``; a URI written ``http://user:password@host``
has them moved there (``take_credentials``), so no config, param, log or job file ever holds them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from omegaconf import DictConfig, OmegaConf

from harness.core.errors import ConfigError, HarnessError
from harness.core.locks import file_lock

_PARAM_LIMIT = 6000  # MLflow's longest param value


class TrackingError(HarnessError):
    exit_code = 5


class NullTracker:
    """Records nothing; used with ``tracking=none``."""

    run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None: ...
    def resume(self, run_id: str) -> bool:
        return False

    def flush(self) -> None: ...
    def find_finished(self, run_key: str) -> dict | None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None: ...


class MlflowTracker(NullTracker):
    """MLflow through its client API. A call that fails (a locked or unreachable store) is retried a
    few times, then kept in memory and in ``<buffer_dir>/<run_id>.jsonl`` while training goes on; every
    later call retries what is pending first. ``flush()`` at the end raises ``TrackingError`` if the
    store still cannot take it, so a run never reports a success the store does not hold."""

    RETRIES = (0.2, 0.5, 1.0, 2.0)
    # How long a run waits for a tracking server that does not answer: at its start, where nothing has
    # answered yet (a typo in the port looks the same as a server restarting: 20 s, then one line and exit 5;
    # an array started while the server restarts under load wants more, e.g. 300), and at its end for what it
    # buffered after the store had answered (patient). A file store waits only RETRIES; calls in between never
    # wait.
    SERVER_START_WAIT_S = float(os.environ.get("HARNESS_TRACKING_START_WAIT_S", 20))
    SERVER_END_WAIT_S = float(os.environ.get("HARNESS_TRACKING_END_WAIT_S", 600))
    _FINAL = ("RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED")

    def __init__(self, uri: str, experiment: str, artifact_root: Path, buffer_dir: Path | None = None):
        warnings.filterwarnings("ignore", module="sqlalchemy")
        warnings.filterwarnings("ignore", message=".*SADeprecationWarning.*")
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # after the import, which sets mlflow's own levels
            logging.getLogger(noisy).setLevel(logging.WARNING)

        if uri.startswith(("http://", "https://")):
            # MLflow's own HTTP retries back off for minutes and would stall training; this tracker retries
            # briefly and then buffers, so fail fast unless the user chose otherwise.
            for name, value in (
                ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
            ):
                os.environ.setdefault(name, value)
        self.uri = uri
        server = uri.startswith(("http://", "https://"))
        self.start_wait_s = self.SERVER_START_WAIT_S if server else sum(self.RETRIES)
        self.end_wait_s = self.SERVER_END_WAIT_S if server else sum(self.RETRIES)
        self._said_waiting = False
        self.buffer_dir = buffer_dir or artifact_root.parent / "tracking_buffer"
        self.pending: list[tuple[str, tuple]] = []
        with _store_creation_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)  # creates a new store's tables
            self.experiment_id = self._experiment_id(experiment, artifact_root)
        self.run_id = None

    def _create_run(self, tags: dict[str, str]) -> str:
        """A new run's id, created once. A create_run whose answer was lost (a server killed or timed out
        after committing) is found again by a one-off token instead of being created twice; a twin made
        by a lower layer's retry is deleted, so no orphan run is left in the store."""
        token = uuid.uuid4().hex
        tags = {**tags, "harness.start_token": token}
        deadline = time.monotonic() + self.start_wait_s
        while True:
            try:
                run_id = self.client.create_run(self.experiment_id, None, tags, tags.get("mlflow.runName")).info.run_id
                break
            except Exception as e:
                found = self._runs_with_token(token)
                if found:
                    run_id = found[0]
                    break
                self._wait_or_raise(e, deadline)
        for twin in self._runs_with_token(token):
            if twin != run_id:
                with contextlib.suppress(Exception):
                    self.client.delete_run(twin)
        return run_id

    def _runs_with_token(self, token: str) -> list[str]:
        try:
            found = self.client.search_runs([self.experiment_id], f"tags.`harness.start_token` = '{token}'")
        except Exception:
            return []
        return [r.info.run_id for r in sorted(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))]

    def _experiment_id(self, experiment: str, artifact_root: Path) -> str:
        """The experiment's id, created if missing. Jobs of an array that start together on a server race
        to create it: the losers (RESOURCE_ALREADY_EXISTS) read the winner's."""
        exp = self._patient(self.client.get_experiment_by_name, experiment)
        if exp is not None:
            return exp.experiment_id
        location = artifact_root.resolve().as_uri() if self.uri.startswith("sqlite") else None
        try:
            return self._patient(self.client.create_experiment, experiment, location)
        except Exception:
            exp = self._patient(self.client.get_experiment_by_name, experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _patient(self, fn, *args):
        """``fn(*args)``, retried for up to ``start_wait_s`` while the store does not answer."""
        deadline = time.monotonic() + self.start_wait_s
        while True:
            try:
                return fn(*args)
            except Exception as e:
                self._wait_or_raise(e, deadline)

    def _wait_or_raise(self, error: Exception, deadline: float) -> None:
        code = getattr(error, "error_code", None)
        if code == "UNAUTHENTICATED":
            raise TrackingError(
                f"the tracking server {self.uri} refused the credentials (401): export MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD (or write tracking.uri=http://user:password@host:port)"
            ) from None
        if code == "PERMISSION_DENIED":
            raise TrackingError(_permission_message(self.uri, error)) from None
        if code in self._FINAL:
            raise error
        if time.monotonic() >= deadline:
            if not _no_answer(error) or self.run_id is not None:  # the store answered, with an error of its own
                raise error
            reason = _first_line(error, 160)
            raise TrackingError(
                f"nothing answered at tracking store {self.uri} for {self.start_wait_s:.0f} s (last: {reason}); "
                "check tracking.uri (host and port), or, for a server that is restarting, raise "
                "HARNESS_TRACKING_START_WAIT_S"
            ) from None
        if not self._said_waiting:
            print(
                f"warning: tracking store {self.uri} does not answer ({type(error).__name__}); "
                f"waiting up to {self.start_wait_s:.0f} s before the run starts",
                file=sys.stderr,
                flush=True,
            )
            self._said_waiting = True
        time.sleep(min(2.0, max(0.2, deadline - time.monotonic())))

    def _retry(self, fn, *args):
        for delay in self.RETRIES:
            try:
                return fn(*args)
            except Exception as e:
                if getattr(e, "error_code", None) in self._FINAL:  # the store answered: asking again changes nothing
                    raise
                time.sleep(delay)
        return fn(*args)

    def _call(self, name: str, *args) -> None:
        """Run ``self.client.<name>(*args)``, or keep it for later if the store will not take it."""
        self._drain()
        if self.pending:
            self._keep(name, args)
            return
        try:
            self._retry(getattr(self.client, name), *args)
        except Exception as e:
            if getattr(e, "error_code", None) == "PERMISSION_DENIED":  # final: waiting would not change it
                raise TrackingError(_permission_message(self.uri, e)) from None
            if not self.pending:
                print(
                    f"warning: tracking store {self.uri} failed ({type(e).__name__}: {e}); training goes on, "
                    f"records are kept in {self._buffer_file()} until it answers",
                    file=sys.stderr,
                )
            self._keep(name, args)

    def _keep(self, name: str, args: tuple) -> None:
        self.pending.append((name, args))
        self.buffer_dir.mkdir(parents=True, exist_ok=True)
        with open(self._buffer_file(), "a") as fh:
            fh.write(json.dumps({"call": name, "args": [_jsonable(a) for a in args]}) + "\n")

    def _drain(self) -> None:
        had = bool(self.pending)
        while self.pending:
            name, args = self.pending[0]
            try:
                getattr(self.client, name)(*args)
            except Exception as e:
                self._last_error = _first_line(e, 200)
                return
            self.pending.pop(0)
        if had and self.run_id:  # all taken: the run's buffer file and its artifact copies are no longer needed
            self._buffer_file().unlink(missing_ok=True)
            for copy in (self.buffer_dir / "artifacts").glob(f"{self.run_id}-*"):
                copy.unlink(missing_ok=True)

    def _buffer_file(self) -> Path:
        return self.buffer_dir / f"{self.run_id or 'no-run'}.jsonl"

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        tags = {k: str(v) for k, v in tags.items()}  # a REST store (mlflow server) takes strings only
        self.run_id = self._create_run(tags)
        items = [Param(k, str(v)[:_PARAM_LIMIT]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("log_batch", self.run_id, (), items[i : i + 100])
        self._call("log_batch", self.run_id, (), (), [RunTag(k, str(v)) for k, v in tags.items()])

    def find_finished(self, run_key: str) -> dict | None:
        """The metrics (and run id) of a FINISHED run of this experiment tagged with ``run_key``, or None."""
        runs = self._patient(
            self.client.search_runs,
            [self.experiment_id],
            f"tags.run_key = '{run_key}' and attributes.status = 'FINISHED'",
        )
        runs = [r for r in runs if SUPERSEDED_TAG not in r.data.tags]  # found wrong after the fact: run again
        if not runs:
            return None
        run = runs[0]
        return {**run.data.metrics, "mlflow_run_id": run.info.run_id}

    def resume(self, run_id: str) -> bool:
        """Continue an existing run (after a kill or a requeue). False if the store does not have it."""
        try:
            self._patient(self.client.get_run, run_id)
        except TrackingError:
            raise
        except Exception:
            return False
        self.run_id = run_id
        self._call("update_run", run_id, "RUNNING")
        self._call("set_tag", run_id, "resumed", "true")
        return True

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self._call("log_batch", self.run_id, items[i : i + 1000])

    def log_artifact(self, path, artifact_path=None) -> None:
        if self.pending:  # keep a copy: the file may be temporary
            import shutil

            keep = self.buffer_dir / "artifacts" / f"{self.run_id}-{Path(path).name}"
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep)
            path = keep
        self._call("log_artifact", self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call("set_tag", self.run_id, k, str(v)[:5000])

    def flush(self) -> None:
        """Send what is buffered; wait up to ``end_wait_s`` for a server that is down (restarting)."""
        self._drain()
        deadline = time.monotonic() + self.end_wait_s
        if self.pending and self.end_wait_s > sum(self.RETRIES):
            print(
                f"warning: tracking store {self.uri} has not taken {len(self.pending)} records yet; "
                f"waiting up to {self.end_wait_s:.0f} s for it",
                file=sys.stderr,
                flush=True,
            )
        while self.pending and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            self._drain()
        if self.pending:
            raise TrackingError(
                f"the tracking store {self.uri} did not take {len(self.pending)} records "
                f"(kept in {self._buffer_file()}; last error {getattr(self, '_last_error', '?')}); the run is not "
                "reported as done. Fix the store "
                "and run the same command again: it resumes from its last checkpoint"
            )

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if self.run_id is None:
            return
        try:
            if reason:
                self._call("set_tag", self.run_id, "failure_reason", reason[:5000])
            self._call("set_terminated", self.run_id, status)
        except Exception:  # ending is best effort when the store is down; the buffer file has it
            pass


def _first_line(error: BaseException, limit: int) -> str:
    """``Type: the first line of the message`` (cut at ``limit`` characters), for a one-line report."""
    return (
        f"{type(error).__name__}: {str(error).strip().splitlines()[0][:limit]}" if str(error).strip() else repr(error)
    )


def _no_answer(error: BaseException) -> bool:
    """Whether ``error`` says that nothing answered (refused, unreachable, timed out): MLflow's REST client
    wraps requests' ConnectionError and Timeout in an MlflowException with the generic INTERNAL_ERROR code."""
    import requests

    seen = error
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _permission_message(uri: str, error: Exception) -> str:
    """One line for a 403 from an authenticating server: which user lacked which permission, and the fix."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "(no user set)")
    detail = str(getattr(error, "message", "") or error).strip().splitlines()[0][:200]
    return (
        f"the tracking server {uri} refused user {user!r} (403 PERMISSION_DENIED: {detail}); an admin must grant "
        "that user EDIT on the experiment (or let it create experiments): docs/sweeps.md, 'Users and permissions'"
    )


def _store_creation_lock(uri: str):
    """MLflow creates a new sqlite store's tables on first use, and two processes doing it at once
    corrupt it (alembic "expected to match one row", CircularDependencyError). Jobs that share a
    sqlite file therefore take turns at creating the store and the experiment."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    return file_lock(db.with_name(db.name + ".init.lock"))


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    try:  # MLflow entities iterate as (property, value) pairs
        return {k: _jsonable(v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        return repr(value)


_CREDENTIALS = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:]*)(?::(?P<password>[^/@]*))?@")


def take_credentials(uri: str | None) -> str | None:
    """``uri`` without a ``user:password@`` part; an http(s) URI's credentials move to the environment
    (``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD``, which MLflow's client reads and which
    jobs inherit), so that configs, params, warnings and job files never hold them."""
    if not uri:
        return uri
    _refuse_raw_separators(str(uri))
    match = _CREDENTIALS.match(str(uri))
    if match is None or (match["password"] is None and not match["scheme"].startswith("http")):
        return uri
    if match["scheme"].startswith("http"):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(match["user"])
        if match["password"] is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(match["password"])
        return match["scheme"] + str(uri)[match.end() :]
    raise ConfigError(
        f"tracking.uri {redact(uri)} carries a password: drop it from the URI and give it to the database "
        "driver another way (PGPASSWORD or ~/.pgpass for PostgreSQL)"
    )


def _refuse_raw_separators(uri: str) -> None:
    """A ``user:password@`` whose password holds a raw ``/`` or ``@`` cannot be parsed as a URL (the host would
    be read from inside the password): refused, showing no part of it, with the encoding that fixes it."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest:
        return
    authority, _, path = rest.partition("/")
    raw_at = authority.count("@") > 1
    # user:pass/word@host: the '/' ended the authority early, leaving "user:pass" (a port that is no number)
    # and an '@' in what follows; host:5000/a@b is a path with an '@' in it
    raw_slash = "@" not in authority and "@" in path.split("/")[0] and not authority.rpartition(":")[2].isdigit()
    raw_slash = raw_slash and ":" in authority
    if raw_at or raw_slash:
        host = rest.rsplit("@", 1)[1]
        raise ConfigError(
            f"tracking.uri {scheme}://***@{host} has a password with a raw '/' or '@': percent-encode them "
            "(%2F, %40) or export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
        )


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` in it replaced by ***."""
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*):[^/@\s]*@", r"\1:***@", str(text))


def tracking_uri(cfg: DictConfig) -> str:
    return store_uri(cfg.tracking.uri, cfg.results_dir)


def store_uri(explicit: str | None, results_dir: str | os.PathLike) -> str:
    """``tracking.uri=`` if given, else $MLFLOW_TRACKING_URI, else the sqlite file under results_dir."""
    if explicit:
        return take_credentials(str(explicit))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return take_credentials(os.environ["MLFLOW_TRACKING_URI"])
    db = Path(results_dir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}?timeout=60"  # concurrent jobs wait for sqlite's write lock instead of failing


def make_tracker(cfg: DictConfig) -> NullTracker:
    from harness.core import distributed

    if not cfg.tracking.enabled or not distributed.is_main():  # rank 0 records a distributed run
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


# A run found wrong after it finished carries this tag, with the reason (``StoreReader.supersede``).
SUPERSEDED_TAG = "harness.superseded"


class StoreReader:
    """The reading side of a tracking store: runs, their params, metrics and artifacts. A store that does
    not exist yet reads as empty (reading never creates one)."""

    def __init__(self, uri: str):
        self.uri = uri

    def _client(self):
        warnings.filterwarnings("ignore", module="sqlalchemy")
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return MlflowClient(tracking_uri=self.uri)

    def client(self):
        """MLflow's own client on this store, for scripts that need more than the methods here."""
        return self._client()

    def exists(self) -> bool:
        return not self.uri.startswith("sqlite:///") or Path(self.uri[10:].split("?")[0]).is_file()

    def runs(self, experiment: str, superseded: bool = False):
        """Every run of ``experiment`` as a pandas DataFrame (columns run_id, status, params.*, metrics.*,
        tags.*), without the reports' own runs, nor runs marked superseded (``supersede``) unless
        ``superseded``; empty when the store or the experiment does not exist."""
        import pandas as pd

        if not self.exists():
            return pd.DataFrame()
        import mlflow

        self._client()  # quiets mlflow's loggers
        with _tracking_uri(mlflow, self.uri):
            if mlflow.get_experiment_by_name(experiment) is None:
                return pd.DataFrame()
            runs = mlflow.search_runs(experiment_names=[experiment], output_format="pandas", max_results=50000)
        if "tags.harness.kind" in runs:
            runs = runs[runs["tags.harness.kind"].fillna("") != "report"]
        if not superseded and f"tags.{SUPERSEDED_TAG}" in runs:
            runs = runs[runs[f"tags.{SUPERSEDED_TAG}"].isna()]
        return runs.reset_index(drop=True)

    def supersede(self, run_ids: list[str], reason: str) -> None:
        """Mark runs found wrong after they finished (a defect fixed since): ``skip_finished`` runs their configs
        again, and ``compare`` and the studies leave them out; their records stay. TrackingError (one line) for
        a run the store does not hold, before any is marked."""
        client = self._client()
        for run_id in run_ids:
            try:
                client.get_run(run_id)
            except Exception:
                raise TrackingError(f"the tracking store {self.uri} holds no run {run_id}") from None
        for run_id in run_ids:
            client.set_tag(run_id, SUPERSEDED_TAG, reason[:5000])

    def metric_history(self, run_id: str, key: str) -> dict[int, float]:
        """{step: value} of one metric of one run."""
        return {m.step: m.value for m in self._client().get_metric_history(run_id, key)}

    def download_artifact(self, run_id: str, path: str, dst: str | os.PathLike) -> Path:
        """A run's artifact copied under ``dst``; TrackingError (one line) if the run or the file is not there."""
        from mlflow.exceptions import MlflowException

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            return Path(self._client().download_artifacts(run_id, path, str(dst)))
        except MlflowException as e:
            raise TrackingError(
                f"MLflow run {run_id} at {self.uri} has no {path} ({str(e).strip().splitlines()[0][:120]})"
            ) from None

    def log_to_run(
        self,
        run_id: str,
        artifacts: dict[str, str | os.PathLike] | list[tuple[str, str | os.PathLike]],
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
    ) -> None:
        """Add files ({artifact folder: path}, or (folder, path) pairs), metrics and tags to an existing run
        (an export of its model, a profile, a retiming)."""
        client = self._client()
        for folder, path in artifacts.items() if isinstance(artifacts, dict) else artifacts:
            client.log_artifact(run_id, str(path), folder)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)


def open_store(uri: str) -> StoreReader:
    return StoreReader(uri)


@contextlib.contextmanager
def _tracking_uri(mlflow, uri: str):
    """mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI; undo both so that later runs in this
    process (a notebook, the test suite) keep writing to their own store."""
    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
