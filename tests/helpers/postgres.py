"""A throwaway PostgreSQL server: Debian's binaries, a new cluster in a temporary folder, loopback only, logins
by password (as a team server's database has them).

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.mlflow_ui import free_port

SERVICE_USER = "postgres"
DATABASE = "mlflow"
USER = "mlflow"
HOST = "127.0.0.1"


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


@dataclass(frozen=True)
class Postgres:
    """A running cluster whose superuser ``mlflow`` logs in with ``password``."""

    port: int
    password: str

    def uri(self, database: str = DATABASE) -> str:
        """SQLAlchemy URI (psycopg2: SQLAlchemy 2.1 defaults to psycopg 3) without the password, which libpq
        reads from PGPASSFILE."""
        return f"postgresql+psycopg2://{USER}@{HOST}:{self.port}/{database}"

    def write_pgpass(self, path: Path) -> Path:
        """A .pgpass for this cluster, readable by its owner only (libpq ignores one that others can read)."""
        path.write_text(f"{HOST}:{self.port}:*:{USER}:{self.password}\n")
        path.chmod(0o600)
        return path


@contextlib.contextmanager
def postgres_server(bin_dir: Path, password: str, databases: Sequence[str] = (DATABASE,)) -> Iterator[Postgres]:
    """A running cluster with ``databases`` on a free loopback port, password logins only (scram-sha-256).
    Stopped (``pg_ctl stop`` waits for every server process) and deleted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="lungexp-postgres-"))  # outside pytest's root-only tmp folders
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PGPASSWORD": password}  # for createdb; never on a command line
    user = {}
    password_file = folder / "password"
    password_file.write_text(password)
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVICE_USER)
        for path in (folder, password_file):
            os.chown(path, account.pw_uid, account.pw_gid)
        user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data, port = folder / "data", free_port()

    def run(*command: str | Path) -> None:
        subprocess.run([str(part) for part in command], env=env, cwd=folder, check=True, capture_output=True,
                       timeout=120, **user)

    try:
        run(bin_dir / "initdb", "-D", data, "-U", USER, "--auth=scram-sha-256", f"--pwfile={password_file}",
            "-E", "UTF8", "--no-sync")
        password_file.unlink()
        run(bin_dir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "start",
            "-o", f"-h {HOST} -p {port} -k {folder}")
        for database in databases:
            run(bin_dir / "createdb", "-h", HOST, "-p", str(port), "-U", USER, database)
        yield Postgres(port, password)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{error.cmd[0]} failed: {error.stderr.decode(errors='replace')[-2000:]}") from None
    finally:
        if (data / "postmaster.pid").exists():
            run(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(folder, ignore_errors=True)
