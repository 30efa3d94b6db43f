#!/usr/bin/env python
"""Make the MLflow auth database's admin password the one in $MLFLOW_ADMIN_PASSWORD.

    MLFLOW_ADMIN_PASSWORD=... python scripts/rotate_admin.py <auth database URI> [admin user]

MLflow's basic-auth creates the admin from its config only when the user does not exist yet: restarted with a
new MLFLOW_ADMIN_PASSWORD, the server kept accepting the old password and refused the new one, while
basic_auth.ini showed the new one. scripts/mlflow_server.sh runs this before every start with auth, so the
configured password is the admin's password. The password is read from the environment, never from argv.
Exits 0 (unchanged, changed, or no admin yet: the server creates it); says so on stderr when it changed it.
"""

from __future__ import annotations

import os
import sys


def rotate(db_uri: str, user: str, password: str) -> bool:
    from harness.server_auth import rotate_admin

    return rotate_admin(db_uri, user, password)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or not os.environ.get("MLFLOW_ADMIN_PASSWORD"):
        sys.exit("usage: MLFLOW_ADMIN_PASSWORD=... python scripts/rotate_admin.py <auth database URI> [admin user]")
    user = sys.argv[2] if len(sys.argv) == 3 else "admin"
    if rotate(sys.argv[1], user, os.environ["MLFLOW_ADMIN_PASSWORD"]):
        print(f"mlflow_server.sh: the password of admin user {user!r} is now MLFLOW_ADMIN_PASSWORD", file=sys.stderr)
