"""The production tracking server (scripts/mlflow_server.sh): PostgreSQL behind MLflow's basic-auth, and
credentials that never land in a config, a param, a job file or a log. Loopback only. The server tests
skip, saying why, where PostgreSQL or mlflow[auth] is missing."""

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.tracking import redact, take_credentials

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mlflow_server.sh"


@pytest.fixture(autouse=True)
def _restore_credentials():
    """take_credentials writes the process environment: put it back for the tests that follow."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")
    saved = {name: os.environ.pop(name, None) for name in names}
    yield
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


@pytest.mark.quick
def test_credentials_in_the_uri_move_to_the_environment():
    assert take_credentials("http://alice:p%40ss@127.0.0.1:5000/x") == "http://127.0.0.1:5000/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    for uri in ("sqlite:////r/mlflow.db?timeout=60", "http://127.0.0.1:5000", "postgresql+psycopg2://u@h:5433/db"):
        assert take_credentials(uri) == uri
    from harness.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"postgresql://u:\*\*\*@h/db carries a password.*PGPASSWORD"):
        take_credentials("postgresql://u:hunter2@h/db")
    assert (
        redact("at http://bob:hunter2@h:1 and postgresql://u:x@h") == "at http://bob:***@h:1 and postgresql://u:***@h"
    )


@pytest.mark.quick
@pytest.mark.parametrize("password", ["Secr/tPw", "Se@cret", "a/b@c"])
def test_a_password_with_a_raw_slash_or_at_is_refused_showing_none_of_it(run_cli, password):
    """Unencoded, '/' ends the URL's authority early and '@' splits it: the host would be read from inside
    the password (and a piece of it shown as the user name). Refused in one line; encoded, it works."""
    code, out, err = run_cli("run", "task=digits", f"tracking.uri=http://alice:{password}@127.0.0.1:5999", "--cfg")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "%2F, %40" in err, err
    assert not any(piece in out + err for piece in password.replace("@", "/").split("/") if len(piece) > 1)
    encoded = password.replace("/", "%2F").replace("@", "%40")
    code, out, err = run_cli("run", "task=digits", f"tracking.uri=http://alice:{encoded}@127.0.0.1:5999", "--cfg")
    assert code == 0 and os.environ["MLFLOW_TRACKING_PASSWORD"] == password and encoded not in out + err
    assert take_credentials("http://127.0.0.1:5000/a@b") == "http://127.0.0.1:5000/a@b"  # an '@' in a path


def test_no_config_param_or_job_file_holds_the_password(run_cli):
    from harness.config import compose
    from harness.launch import _without_credentials
    from harness.tracking import flatten

    uri = "tracking.uri=http://carol:hunter2-secret@127.0.0.1:5999"
    cfg = compose(["task=digits", uri])
    assert cfg.tracking.uri == "http://127.0.0.1:5999" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2-secret"
    assert "hunter2" not in json.dumps(flatten(cfg), default=str)
    code, out, err = run_cli("run", "task=digits", uri, "--cfg")
    assert code == 0 and "127.0.0.1:5999" in out and "hunter2" not in out + err
    # A sweep rewrites its overrides before anything is pickled for a job (local or SLURM).
    assert _without_credentials(uri + ",http://d:pw2@h:1") == "tracking.uri=http://127.0.0.1:5999,http://h:1"
    assert _without_credentials("task=digits") == "task=digits"


def _script(tmp_path, **env):
    """The server script with a fake python that prints its arguments instead of serving."""
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/sh\nif [ "$1" = -c ]; then echo fake-secret; else echo "$@"; fi\n')
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_ADMIN_PASSWORD", "AUTH", "HOST")}
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "results")],
        env={**base, "PYTHON": str(fake), "STATE_DIR": str(tmp_path / "state"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.quick
def test_the_server_refuses_the_network_without_auth(tmp_path):
    proc = _script(tmp_path, HOST="0.0.0.0")  # auth is on for any non-loopback host: it needs a password
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "set MLFLOW_ADMIN_PASSWORD" in proc.stderr
    proc = _script(tmp_path, HOST="0.0.0.0", AUTH="0")
    assert proc.returncode == 2 and "ALLOW_INSECURE=1" in proc.stderr and not proc.stdout
    proc = _script(tmp_path, HOST="0.0.0.0", AUTH="0", ALLOW_INSECURE="1")
    assert proc.returncode == 0 and "WITHOUT authentication" in proc.stderr and "--app-name" not in proc.stdout

    proc = _script(tmp_path, HOST="0.0.0.0", MLFLOW_ADMIN_PASSWORD="pw-in-env-only")
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--app-name") + 1] == "harness-auth"
    ini = tmp_path / "state" / "basic_auth.ini"
    assert (ini.stat().st_mode & 0o777) == 0o600 and (ini.parent.stat().st_mode & 0o777) == 0o700
    assert "admin_password = pw-in-env-only" in ini.read_text()
    assert "pw-in-env-only" not in proc.stdout + proc.stderr
    assert not any("pw-in-env-only" in p.read_text() for p in (tmp_path / "results").rglob("*") if p.is_file())

    proc = _script(tmp_path, AUTH="1")  # loopback asks for it only with AUTH=1
    assert proc.returncode == 2 and "set MLFLOW_ADMIN_PASSWORD" in proc.stderr
    proc = _script(tmp_path, BACKEND_URI="postgresql://u:inline@h/db")
    assert proc.returncode == 2 and "PGPASSWORD" in proc.stderr and "inline" not in proc.stderr
    for uri in ("postgresql://u@h/db?password=inline", "postgresql://u@h/db?sslmode=require&password=inline"):
        proc = _script(tmp_path, BACKEND_URI=uri)
        assert proc.returncode == 2 and "PGPASSWORD" in proc.stderr and "inline" not in proc.stderr
    proc = _script(tmp_path, AUTH="true")  # a documented synonym of 1: auth on, so it needs the password
    assert proc.returncode == 2 and "set MLFLOW_ADMIN_PASSWORD" in proc.stderr
    for word in ("yes", "2", "ture", "on"):  # anything else is refused, never read as "off"
        proc = _script(tmp_path, AUTH=word, MLFLOW_ADMIN_PASSWORD="pw")
        assert proc.returncode == 2 and "AUTH must be 1" in proc.stderr and not proc.stdout, word
    proc = _script(tmp_path, STORE="mysql")
    assert proc.returncode == 2 and "STORE=postgres" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url, body=None, auth=None, method="POST"):
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method=method)
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}
    except OSError:  # not listening yet
        return 0, {}


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory):
    """A PostgreSQL-backed, authenticated server on loopback, started by the script as a user would."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) and shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    pytest.importorskip("psycopg2", reason="pip install -e '.[server]' (psycopg2-binary)")
    pytest.importorskip("flask_wtf", reason="pip install -e '.[server]' (mlflow[auth])")
    tmp = tmp_path_factory.mktemp("pgserver")
    port, password = _free_port(), "adm-" + secrets.token_hex(8)
    # initdb refuses root: the cluster belongs to postgres, in a folder postgres can reach.
    pgdata = f"/var/lib/postgresql/harness-test-{os.getpid()}" if os.getuid() == 0 else str(tmp / "pgdata")
    env = {**os.environ, "STATE_DIR": str(tmp / "state"), "PGDATA": pgdata, "PGPORT": str(_free_port())}
    env.update(PYTHON=str(Path(os.sys.executable)), PORT=str(port), STORE="postgres", AUTH="1", WORKERS="2")
    env["MLFLOW_CREATORS"] = "maker"  # besides the admin, the one user who may create experiments
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen(
        ["bash", str(SCRIPT), str(tmp / "results")],
        env={**env, "MLFLOW_ADMIN_PASSWORD": password},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while _request(url + "/api/2.0/mlflow/experiments/search", {"max_results": 1})[0] != 401:
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"the server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield {"url": url, "password": password, "tmp": tmp}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
        subprocess.run(["bash", str(SCRIPT), "postgres", "stop"], env=env, timeout=60)
        shutil.rmtree(pgdata, ignore_errors=True)


def test_postgres_server_refuses_strangers_and_read_only_users(postgres_server):
    url, admin = postgres_server["url"], ("admin", postgres_server["password"])
    search = url + "/api/2.0/mlflow/experiments/search"
    assert _request(search, {"max_results": 1})[0] == 401
    assert _request(search, {"max_results": 1}, auth=("admin", "wrong"))[0] == 401
    status, body = _request(url + "/api/2.0/mlflow/experiments/create", {"name": "owned-by-admin"}, auth=admin)
    assert status == 200, body
    experiment = body["experiment_id"]
    assert (
        _request(
            url + "/api/2.0/mlflow/users/create", {"username": "reader", "password": "reader-pw-1234"}, auth=admin
        )[0]
        == 200
    )
    reader = ("reader", "reader-pw-1234")
    assert _request(search, {"max_results": 5}, auth=reader)[0] == 200  # default_permission = READ
    status, _ = _request(url + "/api/2.0/mlflow/runs/create", {"experiment_id": experiment}, auth=reader)
    assert status == 403


def _clear_login_failures(postgres_server) -> None:
    import sqlite3

    db = postgres_server["tmp"] / "state" / "login_failures.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            con.execute("delete from failures")


def test_read_only_users_cannot_create_experiments_and_bearer_gets_401(postgres_server):
    url, admin = postgres_server["url"], ("admin", postgres_server["password"])
    for name in ("reader2", "maker"):
        status, _ = _request(
            url + "/api/2.0/mlflow/users/create", {"username": name, "password": f"{name}-pw-12345"}, auth=admin
        )
        assert status == 200
    create = url + "/api/2.0/mlflow/experiments/create"
    assert _request(create, {"name": "claimed-by-reader"}, auth=("reader2", "reader2-pw-12345"))[0] == 403
    status, _ = _request(
        url + "/api/2.0/mlflow/registered-models/create", {"name": "m1"}, auth=("reader2", "reader2-pw-12345")
    )
    assert status == 403
    assert _request(create, {"name": "made-by-maker"}, auth=("maker", "maker-pw-12345"))[0] == 200  # MLFLOW_CREATORS
    status, body = _request(create, {"name": "made-by-admin"}, auth=admin)
    assert status == 200
    runs = url + "/api/2.0/mlflow/runs/create"
    reader = ("reader2", "reader2-pw-12345")
    assert _request(runs, {"experiment_id": body["experiment_id"]}, auth=reader)[0] == 403  # read-only
    grant = {"username": "reader2", "resource_type": "experiment", "resource_id": body["experiment_id"]}
    status, _ = _request(url + "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": "EDIT"}, auth=admin)
    assert status == 200  # docs/sweeps.md's recipe: EDIT on one experiment
    assert _request(runs, {"experiment_id": body["experiment_id"]}, auth=reader)[0] == 200
    assert _request(create, {"name": "x"}, auth=("reader2", "wrong-password"))[0] == 401  # not 403: no user oracle
    req = urllib.request.Request(url + "/api/2.0/mlflow/experiments/search?max_results=1")
    req.add_header("Authorization", "Bearer abc.def.ghi")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(req, timeout=30)
    assert answer.value.code == 401  # was a 500 from MLflow's auth cache
    _clear_login_failures(postgres_server)


def test_unknown_users_take_as_long_as_wrong_passwords_and_guessing_is_throttled(postgres_server):
    url = postgres_server["url"] + "/api/2.0/mlflow/experiments/search"
    _clear_login_failures(postgres_server)
    try:
        timings = {"admin": [], "no-such-user": []}
        for _ in range(9):  # 18 refused logins: under the 20 a minute that are let through
            for user in timings:
                started = time.perf_counter()
                assert _request(url, {"max_results": 1}, auth=(user, "wrong-password"))[0] == 401
                timings[user].append(time.perf_counter() - started)
        wrong, unknown = (sorted(t)[len(t) // 2] for t in timings.values())
        assert abs(unknown - wrong) <= 0.2 * wrong, (unknown, wrong)  # medians within 20% (were 6-9 vs 112-177 ms)
        for _ in range(2):
            assert _request(url, {"max_results": 1}, auth=("admin", "wrong-password"))[0] == 401  # 19th, 20th
        assert _request(url, {"max_results": 1}, auth=("admin", "wrong-password"))[0] == 429  # the 21st
        admin = ("admin", postgres_server["password"])
        assert _request(url, {"max_results": 1}, auth=admin)[0] == 429  # the address waits out the minute
    finally:
        _clear_login_failures(postgres_server)


def test_a_run_logs_through_auth_and_leaves_no_password_behind(postgres_server, run_cli, tiny_digits):
    url, password = postgres_server["url"], postgres_server["password"]
    results = Path(next(o for o in tiny_digits if o.startswith("results_dir="))[12:])
    secret_uri = url.replace("http://", f"http://admin:{password}@")
    overrides = [*tiny_digits, f"tracking.uri={secret_uri}", "tracking.experiment=pg-auth", "method=l1", "--json"]
    code, out, err = run_cli("run", *overrides)
    assert code == 0, err
    run_id = json.loads(out.strip().splitlines()[-1])["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=url).get_run(run_id)  # credentials from the environment
    assert run.info.status == "FINISHED" and run.data.params["tracking.uri"] == url
    assert password not in json.dumps([run.data.params, run.data.tags])
    # compare reads the authenticated store as it reads the sqlite file
    code, table, err = run_cli("compare", f"tracking.uri={secret_uri}", "experiment=pg-auth", "--no-log")
    assert code == 0 and "l1" in table and password not in table + err, err
    # ... and export fetches the model from it and logs the exported file back to the run
    exported = results / "exported.pt"
    code, out2, err = run_cli("export", run_id, "format=pt", f"out={exported}", f"tracking.uri={secret_uri}")
    assert code == 0 and exported.is_file(), err
    artifacts = [a.path for a in MlflowClient(tracking_uri=url).list_artifacts(run_id, "export")]
    assert artifacts and password not in out2 + err
    leaked = [p for p in results.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaked and password not in out + err


def _slurm_up() -> bool:
    try:
        return "is UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _slurm_up(), reason="no SLURM controller answers; bash scripts/slurm_local.sh start")
def test_a_slurm_job_gets_the_credentials_from_the_environment_only(postgres_server, run_cli, tiny_digits):
    url, password = postgres_server["url"], postgres_server["password"]
    results = Path(next(o for o in tiny_digits if o.startswith("results_dir="))[12:])
    secret_uri = url.replace("http://", f"http://admin:{password}@")
    code, out, err = run_cli(
        "sweep", *tiny_digits, "method=l1", f"tracking.uri={secret_uri}", "tracking.experiment=pg-slurm",
        "launcher=slurm", "threads=1", "--wait",
    )  # fmt: skip
    assert code == 0 and out.count("| DONE") == 1, out + err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    (run,) = client.search_runs([client.get_experiment_by_name("pg-slurm").experiment_id])
    assert run.info.status == "FINISHED"
    files = [p for p in results.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sh" for p in files)  # the sbatch script is there, and clean
    assert not [p for p in files if password.encode() in p.read_bytes()] and password not in out + err


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    return not _group_alive(pgid)


@pytest.mark.quick
def test_stop_ends_the_whole_process_group_of_a_supervised_server(tmp_path):
    """scripts/supervise.py with a stand-in server that leaves children of its own (as mlflow server's
    uvicorn workers are): `mlflow_server.sh stop` (SIGTERM to the supervisor) leaves none of them."""
    server = "import subprocess, sys, time; [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']) for _ in range(2)]; time.sleep(300)"
    env = {**os.environ, "STATE_DIR": str(tmp_path), "PORT": "5099"}
    pid_file = tmp_path / "mlflow_server-5099.pid"
    sup = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "supervise.py"),
            "--pid-file",
            str(pid_file),
            "--",
            sys.executable,
            "-c",
            server,
        ]
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (pid_file.exists() and len(_children(sup.pid)) >= 2):
        time.sleep(0.1)
    (leader,) = _server_children(sup.pid)
    status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=10)
    assert status.returncode == 0 and f"pid {sup.pid}" in status.stderr
    stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert sup.wait(10) == 0 and _wait_gone(leader, 10) and not pid_file.exists()
    status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=10)
    assert status.returncode == 3 and "not running" in status.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _server_children(supervisor: int) -> list[int]:
    """The supervisor's children but its watchdog (a fork of the supervisor: the same command line)."""
    own = Path(f"/proc/{supervisor}/cmdline").read_bytes()
    return [p for p in _children(supervisor) if Path(f"/proc/{p}/cmdline").read_bytes() != own]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_a_killed_server_leaves_nothing_behind_and_a_taken_port_is_refused(tmp_path):
    """The real server: SIGKILL of the pid a supervisor holds (the script's) stops every process of the
    server's group and frees the port; a second start on the taken port is refused at once in one line."""
    port = _free_port()
    env = {**os.environ, "PYTHON": sys.executable, "STATE_DIR": str(tmp_path / "state"), "PORT": str(port)}
    env = {k: v for k, v in env.items() if k not in ("MLFLOW_ADMIN_PASSWORD", "AUTH", "HOST")}
    script = subprocess.Popen(
        ["bash", str(SCRIPT), str(tmp_path / "results")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not _healthy(port):
            assert script.poll() is None, script.stderr.read().decode()
            time.sleep(0.5)
        (leader,) = _server_children(script.pid)  # the script exec'd into the supervisor; the server leads a group
        assert (
            os.getpgid(leader) == leader
            and len(subprocess.run(["pgrep", "-g", str(leader)], capture_output=True, text=True).stdout.split()) > 1
        )
        started = time.monotonic()
        second = subprocess.run(
            ["bash", str(SCRIPT), str(tmp_path / "r2")], env=env, capture_output=True, text=True, timeout=30
        )
        assert second.returncode != 0 and time.monotonic() - started < 10
        assert f"127.0.0.1:{port} is taken" in second.stderr and second.stderr.strip().count("\n") <= 1, second.stderr
        script.kill()  # SIGKILL: nothing of ours runs in that process any more
        assert _wait_gone(leader, 15)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT is no owner
            s.bind(("127.0.0.1", port))  # free again
            s.listen()
    finally:
        script.kill()
        with contextlib.suppress(NameError, ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)


def test_a_new_admin_password_replaces_the_old_one_at_start(tmp_path, monkeypatch):
    """MLflow creates the admin once; the server script writes a changed MLFLOW_ADMIN_PASSWORD to the auth
    database before each start (scripts/rotate_admin.py): then the new password works and the old one not."""
    import runpy

    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    db = f"sqlite:///{tmp_path / 'auth.db'}"
    store = SqlAlchemyStore()
    store.init_db(db)
    store.create_user("admin", "old-password-12", is_admin=True)
    rotate = runpy.run_path(str(ROOT / "scripts" / "rotate_admin.py"))["rotate"]
    assert rotate(db, "admin", "new-password-34") and not rotate(db, "admin", "new-password-34")  # once
    assert store.authenticate_user("admin", "new-password-34", use_primary=True)
    assert not store.authenticate_user("admin", "old-password-12", use_primary=True)
    assert not rotate(db, "nobody", "new-password-34")  # no such admin yet: the server creates it
    monkeypatch.setenv("MLFLOW_ADMIN_PASSWORD", "third-password-56")  # the script's way: from the environment
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "rotate_admin.py"), db], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "is now MLFLOW_ADMIN_PASSWORD" in proc.stderr and "third" not in proc.stderr
    assert store.authenticate_user("admin", "third-password-56", use_primary=True)
