#!/usr/bin/env python
"""Run a server command as a supervised process group, so that stopping it leaves nothing behind.

    python scripts/supervise.py --pid-file FILE -- <command ...>

scripts/mlflow_server.sh runs `mlflow server` through it. `mlflow server` starts uvicorn workers and a job
runner as children; killing only its own pid (what a supervisor, SLURM or a user's `kill` holds) left them
running and answering, and the next start failed on the taken port while a new, idle `mlflow server` stayed
alive. Here:

- the command runs in a process group of its own; SIGTERM, SIGINT or SIGHUP to this process stops the whole
  group (SIGTERM, then SIGKILL after ``--grace`` seconds);
- if this process is killed outright (SIGKILL), a watchdog outside the group notices within 0.2 s and stops
  the group the same way;
- if the command's own process dies, whatever it left in its group is stopped too, and this process exits;
- a port given by the command's ``--port`` (on its ``--host``) that is already taken is refused at once,
  in one line, before anything starts (exit 2);
- ``FILE`` holds this process's pid while it runs (``mlflow_server.sh stop|status`` read it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as the server binds (SO_REUSEADDR): a port held only by closed connections in TIME_WAIT is free, one
        # that something listens on is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def _option(command: list[str], name: str, default: str) -> str:
    return command[command.index(name) + 1] if name in command[:-1] else default


def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM to every process of the group, then SIGKILL to whatever is left after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def watchdog(supervisor: int, pgid: int, grace: float) -> None:
    """In a forked child outside the group: stop the group once the supervisor is gone (even SIGKILLed)."""
    os.setsid()  # not in the supervisor's group or the server's: a signal to either leaves it running
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while os.getppid() == supervisor:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            os._exit(0)  # the group is gone already: nothing to watch
        time.sleep(0.2)
    stop_group(pgid, grace)
    os._exit(0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid-file", type=Path, required=True)
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    host, port = _option(command, "--host", "127.0.0.1"), int(_option(command, "--port", "0"))
    if port and port_taken(host, port):
        print(f"supervise: {host}:{port} is taken (another server?); stop it or choose PORT=", file=sys.stderr)
        return 2

    stopping = {"signal": None}

    def on_signal(signum, frame):
        stopping["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    child = subprocess.Popen(command, start_new_session=True)  # its own session and process group
    pgid = child.pid
    if os.fork() == 0:
        watchdog(os.getppid(), pgid, args.grace)
    args.pid_file.parent.mkdir(parents=True, exist_ok=True)
    args.pid_file.write_text(f"{os.getpid()}\n")
    try:
        while child.poll() is None and stopping["signal"] is None:
            time.sleep(0.2)
        stop_group(pgid, args.grace)  # a signal to us, or the server's own process gone: its children go too
        code = child.wait()
    finally:
        with contextlib.suppress(FileNotFoundError):
            if args.pid_file.read_text().strip() == str(os.getpid()):
                args.pid_file.unlink()
    return 0 if stopping["signal"] is not None else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
