"""How many concurrent jobs the tracking store takes with nothing lost (docs/sweeps.md, issue 27).

    python benchmarks/tracking_load.py --stores sqlite,server-sqlite,server-postgres --jobs 16,64
    python benchmarks/tracking_load.py --stores server-postgres --jobs 64 --kill server   (then --kill postgres)

Each job is a process that behaves like a run through the harness's own ``MlflowTracker`` (so its retries
and buffering are what is tested): create a run, ~100 params, ``--epochs`` × 5 metrics, an artifact of
``--artifact-mb`` MB, status FINISHED. Stores: the sqlite file opened by every job (``sqlite``), the
server on that file (``server-sqlite``), the server on PostgreSQL with basic-auth (``server-postgres``),
all on loopback, each trial in a fresh folder, experiment and database. ``--kill server|postgres``
SIGKILLs the server (or stops PostgreSQL with ``-m immediate``) ``--kill-after-s`` after every job has
started logging and restarts it ``--down-s`` later. Jobs wait (up to ``--barrier-s``) until all N have started before they
log, so that N really log at once. Afterwards every job's run is read back: metrics lost, duplicated or out
of order, orphan runs, artifacts. One markdown row per trial goes to ``--out`` (appended).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("train/loss", "train/acc", "val/acc", "lr", "epoch_seconds")
ADMIN = "admin"


def value(job: int, key: int, step: int) -> float:
    return round(job * 1000 + key * 100 + step + 0.25, 4)


def job_main(args) -> None:
    """One simulated run; writes what it logged and what it saw to ``--result``."""
    sys.path.insert(0, str(ROOT))
    from harness.tracking import MlflowTracker

    t0 = time.time()
    out = {"job": args.index, "errors": [], "latencies_ms": [], "buffered_max": 0}
    try:
        tracker = MlflowTracker(args.uri, args.experiment, Path(args.workdir) / "mlruns", Path(args.workdir) / "buf")
        params = {f"p{i:03d}": f"value-{i}" for i in range(100)}
        tracker.start(params, {"job": str(args.index), "mlflow.runName": f"job{args.index}"})
        out["run_id"] = tracker.run_id
        Path(args.result).with_suffix(".started").touch()
        # All N log at once, as an array's runs do for hours (here the jobs are short, so without this
        # barrier the first would be done before the last had imported mlflow).
        deadline = time.time() + args.barrier_s
        while len(list(Path(args.result).parent.glob("*.started"))) < args.jobs and time.time() < deadline:
            time.sleep(0.2)
        out["log_start"] = time.time()
        for step in range(args.epochs):
            start = time.perf_counter()
            tracker.log_metrics({k: value(args.index, i, step) for i, k in enumerate(METRICS)}, step=step)
            out["latencies_ms"].append((time.perf_counter() - start) * 1000)
            out["buffered_max"] = max(out["buffered_max"], len(tracker.pending))
            time.sleep(args.epoch_s * random.uniform(0.5, 1.5))
        artifact = Path(args.workdir) / f"artifact_{args.index}.bin"
        artifact.write_bytes(os.urandom(int(args.artifact_mb * 2**20)))
        tracker.log_artifact(artifact, "model")
        tracker.end("FINISHED")
        out["log_end"] = time.time()
        for attempt in range(30):  # the harness reports a failed flush; here the job waits for the store
            try:
                tracker.flush()
                break
            except Exception as e:
                out["errors"].append(f"flush: {type(e).__name__}: {str(e)[:300]}")
                time.sleep(2)
        out["pending_at_exit"] = len(tracker.pending)
    except Exception as e:
        out["errors"].append(f"{type(e).__name__}: {str(e)[:200]}")
    out["wall_s"] = time.time() - t0
    Path(args.result).write_text(json.dumps(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes and all their descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    total, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Store:
    """One trial's store: its URI, its server (if any), and how to kill and restart it."""

    def __init__(self, kind: str, folder: Path, pg: dict):
        self.kind, self.folder, self.pg = kind, folder, pg
        self.server = None
        self.port = free_port()
        self.env = {**os.environ, "PYTHON": sys.executable, "PORT": str(self.port), "WORKERS": "4"}
        if kind == "sqlite":
            self.uri = f"sqlite:///{folder}/mlflow.db?timeout=60"
        elif kind == "server-sqlite":
            self.uri = f"http://127.0.0.1:{self.port}"
        elif kind == "server-postgres":
            self.uri = f"http://127.0.0.1:{self.port}"
            self.env.update(pg, STORE="postgres", AUTH="1", MLFLOW_ADMIN_PASSWORD=pg["ADMIN_PASSWORD"])
        else:
            raise SystemExit(f"unknown store {kind!r}: sqlite, server-sqlite or server-postgres")

    def start(self) -> None:
        if self.kind == "sqlite":
            return
        log = open(self.folder / "server.log", "a")
        self.server = subprocess.Popen(
            ["bash", str(ROOT / "scripts/mlflow_server.sh"), str(self.folder)],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except urllib.error.HTTPError:  # it answered (401 with auth on)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise SystemExit(f"the {self.kind} server did not answer in {timeout:.0f} s; see {self.folder}/server.log")

    def pids(self) -> list[int]:
        pids = [self.server.pid] if self.server else []
        if self.kind == "server-postgres":
            pid_file = Path(self.pg["PGDATA"]) / "postmaster.pid"
            if pid_file.exists():
                pids.append(int(pid_file.read_text().split()[0]))
        return pids

    def kill(self, what: str) -> None:
        if what == "server" and self.server:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        elif what == "postgres":
            subprocess.run(
                ["runuser", "-u", "postgres", "--"] * (os.getuid() == 0)
                + [self.pg_ctl(), "-D", self.pg["PGDATA"], "-m", "immediate", "stop"],
                check=True,
                capture_output=True,
            )

    def restart(self, what: str) -> None:
        if what == "server":
            self.start()
        else:
            subprocess.run(
                ["bash", str(ROOT / "scripts/mlflow_server.sh"), "postgres", "start"], env=self.env, check=True
            )

    def pg_ctl(self) -> str:
        return next(str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")))

    def stop(self) -> None:
        if self.server and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=60)

    def client(self):
        sys.path.insert(0, str(ROOT))
        from harness.tracking import open_store

        if self.kind == "server-postgres":
            os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=self.pg["ADMIN_PASSWORD"])
        return open_store(self.uri).client()


def verify(store: Store, experiment: str, jobs: list[dict], n: int, epochs: int, artifact_mb: float) -> dict:
    """Read every run back: what was lost, duplicated, out of order or orphaned."""
    client = store.client()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=3, max_results=10000) if exp else []  # 3: ALL
    by_job: dict[str, list] = {}
    for run in runs:
        by_job.setdefault(run.data.tags.get("job"), []).append(run)
    lost = duplicated = disordered = unfinished = artifacts_missing = 0
    for index in range(n):
        found = [r for r in by_job.get(str(index), []) if r.info.lifecycle_stage == "active"]
        if not found:
            lost += epochs * len(METRICS)
            unfinished += 1
            continue
        run = found[0]
        unfinished += run.info.status != "FINISHED"
        for k, key in enumerate(METRICS):
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            steps = [s for s, _ in history]
            expected = [(s, value(index, k, s)) for s in range(epochs)]
            duplicated += len(steps) - len(set(steps))
            lost += len(set(expected) - set(history))
            disordered += sorted(set(history)) != expected
        sizes = [a.file_size for a in client.list_artifacts(run.info.run_id, "model")]
        artifacts_missing += sizes != [int(artifact_mb * 2**20)]
    orphans = sum(len(v) for v in by_job.values()) - len({k for k, v in by_job.items() if v})
    deleted_twins = sum(r.info.lifecycle_stage == "deleted" for r in runs)
    latencies = [x for j in jobs for x in j.get("latencies_ms", [])]
    intervals = sorted((j["log_start"], j["log_end"]) for j in jobs if "log_start" in j and "log_end" in j)
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    active = peak = 0
    for _, delta in events:
        active += delta
        peak = max(peak, active)
    return {
        "completed": sum(1 for j in jobs if not j.get("errors") and j.get("pending_at_exit") == 0),
        "finished_runs": n - unfinished,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order_histories": disordered,
        "orphan_runs": orphans - deleted_twins,
        "twins_deleted": deleted_twins,
        "artifacts_missing": artifacts_missing,
        "job_errors": sum(len(j.get("errors", [])) for j in jobs),
        "buffered_max": max((j.get("buffered_max", 0) for j in jobs), default=0),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": sorted(latencies)[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "peak_active": peak,
    }


def trial(kind: str, n: int, args, pg: dict) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"load-{kind}-{n}-", dir=args.workdir))
    store = Store(kind, folder, pg)
    experiment = f"load-{kind}-{n}-{int(time.time())}"
    t0 = time.time()
    store.start()
    # The fault rounds kill the server while jobs start: they are meant to wait for its restart (the harness's
    # default gives up after 20 s, for a tracking.uri where nothing will ever answer).
    env = {"HARNESS_TRACKING_START_WAIT_S": "300", **os.environ}
    if kind == "server-postgres":
        env.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=pg["ADMIN_PASSWORD"])
    procs = []
    for i in range(n):
        cmd = [sys.executable, __file__, "job", "--uri", store.uri, "--experiment", experiment, "--index", str(i)]
        cmd += ["--epochs", str(args.epochs), "--epoch-s", str(args.epoch_s), "--artifact-mb", str(args.artifact_mb)]
        cmd += ["--workdir", str(folder), "--result", str(folder / f"job{i}.json"), "--jobs", str(n)]
        cmd += ["--barrier-s", str(args.barrier_s)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / f"job{i}.err", "w"))
        )
    peak_mb, killed = 0.0, False
    while any(p.poll() is None for p in procs):
        peak_mb = max(peak_mb, tree_rss_mb(store.pids()))
        # The outage begins --kill-after-s after every job has started logging.
        if args.kill and not killed and len(list(folder.glob("job*.started"))) >= n:
            time.sleep(args.kill_after_s)
            store.kill(args.kill)
            time.sleep(args.down_s)
            store.restart(args.kill)
            killed = True
        if time.time() - t0 > args.timeout_s:
            for p in procs:
                p.kill()
            break
        time.sleep(0.5)
    jobs = []
    for i in range(n):
        path = folder / f"job{i}.json"
        jobs.append(json.loads(path.read_text()) if path.exists() else {"errors": ["no result (killed?)"]})
    wall = time.time() - t0
    row = {
        "store": kind,
        "jobs": n,
        "kill": args.kill or "-",
        **verify(store, experiment, jobs, n, args.epochs, args.artifact_mb),
    }
    row.update(store_peak_mb=round(peak_mb), wall_s=round(wall, 1))
    store.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,server-sqlite,server-postgres")
    parser.add_argument("--jobs", default="16,64")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--epoch-s", type=float, default=0.2, help="pause between epochs (the 'training')")
    parser.add_argument("--artifact-mb", type=float, default=3.0)
    parser.add_argument("--kill", choices=["server", "postgres"], default=None)
    parser.add_argument("--kill-after-s", type=float, default=3.0, help="after every job has started")
    parser.add_argument("--down-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--barrier-s", type=float, default=300.0, help="how long a job waits for the others to start")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(ROOT / "results/tracking_load.md"))
    args = parser.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="tracking-load-")
    state = Path(args.workdir) / "state"
    pg = {
        "STATE_DIR": str(state),
        # A fresh cluster per invocation: the admin password only takes on an empty users database.
        "PGDATA": f"/var/lib/postgresql/tracking-load-{os.getpid()}" if os.getuid() == 0 else str(state / "pgdata"),
        "PGPORT": str(free_port()),
        "ADMIN_PASSWORD": os.urandom(12).hex(),
    }
    if args.kill == "postgres" and args.stores != "server-postgres":
        raise SystemExit("--kill postgres needs --stores server-postgres")
    if args.kill == "server" and "sqlite" in args.stores.split(","):
        raise SystemExit("--kill server needs a server store (server-sqlite or server-postgres)")
    rows = []
    try:
        for kind in args.stores.split(","):
            for n in map(int, args.jobs.split(",")):
                print(f"{kind}, {n} jobs ...", file=sys.stderr, flush=True)
                rows.append(trial(kind, n, args, pg))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if "server-postgres" in args.stores:
            env = {**os.environ, **pg, "PYTHON": sys.executable}
            subprocess.run(["bash", str(ROOT / "scripts/mlflow_server.sh"), "postgres", "stop"], env=env)
            subprocess.run(["rm", "-rf", pg["PGDATA"]])
    import pandas as pd

    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".1f")
    header = (
        f"\n### {time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores · {args.epochs} epochs × {len(METRICS)} "
        f"metrics, {args.artifact_mb} MB artifact, {args.epoch_s} s between epochs, 4 server workers\n\n"
        f"`python benchmarks/tracking_load.py {' '.join(sys.argv[1:])}`\n\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(header + table + "\n")
    print(table)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "job":
        p = argparse.ArgumentParser()
        for name in ("--uri", "--experiment", "--workdir", "--result"):
            p.add_argument(name, required=True)
        p.add_argument("--index", type=int, required=True)
        p.add_argument("--jobs", type=int, required=True)
        p.add_argument("--barrier-s", type=float, required=True)
        p.add_argument("--epochs", type=int, required=True)
        p.add_argument("--epoch-s", type=float, required=True)
        p.add_argument("--artifact-mb", type=float, required=True)
        job_main(p.parse_args(sys.argv[2:]))
    else:
        main()
