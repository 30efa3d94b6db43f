"""The tracking server's guard: MLflow's basic-auth app with what it lacks in front of it.

``scripts/mlflow_server.sh`` serves ``mlflow server --app-name harness-auth`` (the ``mlflow.app`` entry point
in pyproject.toml), which is MLflow's own ``basic-auth`` app wrapped by ``Guard``, an ASGI layer in front of
every route:

- an ``Authorization`` header other than Basic (``Bearer ...``) is answered 401 (MLflow's auth cache answered
  it with a 500 and a traceback);
- a client address with ``MAX_FAILURES`` refused logins within ``WINDOW_S`` gets 429 until the window
  passes, counted across the server's workers in the SQLite file ``HARNESS_LOGIN_FAILURES`` names (the
  script puts it in STATE_DIR; without it, each worker counts alone);
- a refused login for a user that does not exist pays for one password hash too, so that its answer takes
  as long as a wrong password for a real user (112-177 ms against 6-9 ms before: a user list by timing);
- creating an experiment or a registered model is for admins and the users named in ``MLFLOW_CREATORS``
  (comma-separated) only: a user with no grants could create experiments, and so claim a name the others
  then could not write to. Everyone else reads (``default_permission = READ``) and writes where an admin
  granted EDIT (docs/sweeps.md, "Users and permissions").
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import threading
import time

MAX_FAILURES = 20
WINDOW_S = 60.0
_CREATE_PATHS = ("/mlflow/experiments/create", "/mlflow/registered-models/create")


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    try:
        user, _, password = base64.b64decode(header.split(" ", 1)[1]).decode("utf-8").partition(":")
    except (IndexError, binascii.Error, UnicodeDecodeError, ValueError):
        return None, None
    return user, password


class FailureLog:
    """Refused logins per client address, in SQLite so that every worker of the server shares them."""

    def __init__(self, path: str | None, window_s: float):
        self.window_s, self.lock = window_s, threading.Lock()  # one connection, used from the request threads
        self.db = sqlite3.connect(path or ":memory:", timeout=5, isolation_level=None, check_same_thread=False)
        with self.lock:
            self.db.execute("create table if not exists failures (client text, at real)")

    def add(self, client: str) -> None:
        with self.lock:
            self.db.execute("insert into failures values (?, ?)", (client, time.time()))

    def recent(self, client: str) -> tuple[int, float]:
        """(refused logins within the window, seconds until the oldest of them leaves it)."""
        with self.lock:
            self.db.execute("delete from failures where at < ?", (time.time() - self.window_s,))
            count, oldest = self.db.execute(
                "select count(*), min(at) from failures where client = ?", (client,)
            ).fetchone()
        return count, (oldest + self.window_s - time.time()) if oldest else 0.0


class Guard:
    """ASGI middleware: non-Basic credentials, repeated failures, user enumeration by timing, and who may
    create experiments (see the module's docstring). ``store`` is MLflow's auth store, ``unprotected`` its
    ``is_unprotected_route``."""

    def __init__(
        self, app, store, creators: set[str], failures: FailureLog, unprotected, max_failures: int = MAX_FAILURES
    ):
        from werkzeug.security import generate_password_hash

        self.app, self.store, self.creators = app, store, creators
        self.failures, self.max_failures = failures, max_failures
        self.unprotected = unprotected  # MLflow's own test of the routes it serves without auth (health, static)
        self.dummy_hash = generate_password_hash(os.urandom(16).hex())  # what an unknown user's password meets

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.unprotected(scope["path"]):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        count, left = await self._run(self.failures.recent, client)
        if count >= self.max_failures:
            wait = int(left) + 1
            return await _reply(
                send,
                429,
                f"too many failed logins from {client}; retry in {wait} s",
                [(b"retry-after", str(wait).encode())],
            )
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if header and not header.lower().startswith("basic "):
            return await _reply(
                send, 401, "only Basic credentials are accepted", [(b"www-authenticate", b'Basic realm="mlflow"')]
            )
        user, password = _basic_credentials(header) if header else (None, None)
        if scope["method"] == "POST" and scope["path"].endswith(_CREATE_PATHS) and user is not None:
            if not await self._may_create(user, password):
                return await _reply(
                    send,
                    403,
                    f"user {user!r} may not create experiments or registered models: an admin can (or add the user to MLFLOW_CREATORS)",
                    code="PERMISSION_DENIED",
                )

        async def send_after_equal_work(message):
            if message["type"] == "http.response.start" and message["status"] == 401 and header:
                await self._run(self.failures.add, client)
                if user is not None and not await self._run(self.store.has_user, user):
                    from werkzeug.security import check_password_hash

                    await self._run(check_password_hash, self.dummy_hash, password or "")
            await send(message)

        return await self.app(scope, receive, send_after_equal_work)

    async def _may_create(self, user: str, password: str | None) -> bool:
        if user in self.creators:
            return True
        if not await self._run(self.store.authenticate_user, user, password or ""):
            return True  # wrong credentials: MLflow's own check answers 401 (a 403 would confirm the user exists)
        return bool(await self._run(lambda: self.store.get_user(user).is_admin))

    @staticmethod
    async def _run(fn, *args):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args)


async def _reply(send, status: int, message: str, headers=(), code: str | None = None) -> None:
    codes = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}
    body = json.dumps({"error_code": code or codes[status], "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def rotate_admin(db_uri: str, user: str, password: str) -> bool:
    """Set ``user``'s password in the auth database to ``password`` if the user exists with another one;
    True if it changed. MLflow creates the admin from its config only once: restarted with a new
    MLFLOW_ADMIN_PASSWORD, the server kept the old password (scripts/rotate_admin.py runs this at each start)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(db_uri)
    if not store.has_user(user, use_primary=True) or store.authenticate_user(user, password, use_primary=True):
        return False
    store.update_user(user, password=password)
    return True


def create_app():
    """The ``harness-auth`` app (a factory: uvicorn --factory): MLflow's basic-auth app behind ``Guard``."""
    from mlflow.server import app as flask_app
    from mlflow.server.auth import create_app as basic_auth
    from mlflow.server.auth import is_unprotected_route, store

    creators = {u.strip() for u in os.environ.get("MLFLOW_CREATORS", "").split(",") if u.strip()}
    failures = FailureLog(os.environ.get("HARNESS_LOGIN_FAILURES"), WINDOW_S)
    return Guard(basic_auth(flask_app), store, creators, failures, is_unprotected_route)
