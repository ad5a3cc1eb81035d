"""A throwaway PostgreSQL server: Debian's binaries, a new cluster in a temporary folder, loopback only.

``make postgres`` installs the package. PostgreSQL refuses to run as root, so as root the cluster belongs to
the ``postgres`` user the package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mlflow_ui import free_port

SERVICE_USER = "postgres"
DATABASE = "mlflow"


def postgres_bin_or_skip() -> Path:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian keeps them in /usr/lib/postgresql/<version>/bin), or skip."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[server]')")
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            if os.geteuid() == 0:
                try:
                    pwd.getpwnam(SERVICE_USER)
                except KeyError:
                    pytest.skip(f"PostgreSQL runs only as a non-root user and there is no '{SERVICE_USER}' user")
            return folder
    pytest.skip("PostgreSQL is not installed: `make postgres` installs it (Debian/Ubuntu: apt-get install postgresql)")


@contextlib.contextmanager
def postgres_server(bin_dir: Path) -> Iterator[str]:
    """A running cluster with database ``mlflow`` on a free loopback port: yields its SQLAlchemy URI (psycopg2
    driver). Stopped (``pg_ctl stop`` waits for every server process) and deleted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="lungexp-postgres-"))  # outside pytest's root-only tmp folders
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    user = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVICE_USER)
        os.chown(folder, account.pw_uid, account.pw_gid)
        user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data, port = folder / "data", free_port()

    def run(*command: str | Path) -> None:
        subprocess.run([str(part) for part in command], env=env, cwd=folder, check=True, capture_output=True,
                       timeout=120, **user)

    try:
        run(bin_dir / "initdb", "-D", data, "-U", DATABASE, "--auth=trust", "-E", "UTF8", "--no-sync")
        run(bin_dir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "start",
            "-o", f"-h 127.0.0.1 -p {port} -k {folder}")
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", DATABASE, DATABASE)
        yield f"postgresql+psycopg2://{DATABASE}@127.0.0.1:{port}/{DATABASE}"  # SQLAlchemy 2.1 defaults to psycopg 3
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{error.cmd[0]} failed: {error.stderr.decode(errors='replace')[-2000:]}") from None
    finally:
        if (data / "postmaster.pid").exists():
            run(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(folder, ignore_errors=True)
