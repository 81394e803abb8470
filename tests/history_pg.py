"""A throwaway PostgreSQL cluster for the server's tests: Debian's postgresql, unix socket only."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"{name} not found: apt-get install postgresql")
    return path


@contextmanager
def cluster() -> Iterator[str]:
    """Start a private cluster; yields a base URL (without database name) over its socket."""
    root = Path(tempfile.mkdtemp(prefix="talkie-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    run = lambda *a: subprocess.run([*as_user, *a], check=True, capture_output=True)
    try:
        run(_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "talkie", "--no-sync")
        run(_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
            f"-k {root} -c listen_addresses='' -c fsync=off -p 5433", "start")
        yield f"postgresql://talkie@/%s?host={root}&port=5433"
    finally:
        subprocess.run([*as_user, _bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def new_database(base: str) -> str:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base % "postgres", autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return base % name
