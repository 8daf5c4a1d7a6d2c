"""A private PostgreSQL cluster for tests: initdb and pg_ctl on a free loopback port, removed afterwards.

When running as root, PostgreSQL refuses to start as root, so the cluster runs as the ``postgres``
user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import free_port, require_tool
from ironwatch.store import Store


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else require_tool(name)


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh, empty database on a private cluster."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    base = tempfile.mkdtemp(prefix="ironwatch-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(base, "data")
    port = free_port()
    try:
        subprocess.run(
            [*run_as, initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*run_as, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(base, "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        try:
            subprocess.run(
                [
                    *run_as,
                    _bin("createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "ironwatch",
                ],
                check=True,
                capture_output=True,
            )
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/ironwatch"
        finally:
            subprocess.run([*run_as, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def empty_postgres(store: Store) -> None:
    """Drop every table, so the next test on the same database starts from an empty one."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
