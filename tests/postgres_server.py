"""A private PostgreSQL server for tests that stop and start it, leaving others' alone.

The cluster lives in a temporary directory, listens on a free loopback port only, trusts
every local connection and is removed by `destroy`. PostgreSQL refuses to run as root, so
as root its programs run as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

__all__ = ["PostgresServer", "find_postgres_bin"]

# Without fsync the cluster writes faster and still keeps every commit through a stop of
# the server (only a crash of the machine would lose them). synchronous_commit stays on:
# off, an immediate stop would take back commits already reported to clients.
_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = off
full_page_writes = off
max_connections = 100
"""


def find_postgres_bin() -> Path | None:
    """The directory of `initdb` and `pg_ctl` (the newest installed version), if any."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name)
    )
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    found = shutil.which("pg_ctl")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One private cluster: `create` it, then `start`, `stop` (immediate: a crash, as far
    as clients can tell) and `start` again as often as needed, and `destroy` it."""

    def __init__(self, bin_dir: Path) -> None:
        self._bin = bin_dir
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        # Under /tmp, not pytest's tmp_path: the postgres user must be able to reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="webhooks-pg-"))
        self.data = self.directory / "data"
        self.log_file = self.directory / "server.log"
        self.running = False

    def _run(self, *command: str, timeout: float) -> None:
        result = subprocess.run(
            [*self._as_postgres, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}{self.log_tail()}"
            )

    def create(self) -> None:
        """Makes the cluster (superuser `postgres`, trust authentication)."""
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self._bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            timeout=60,
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(_SETTINGS.format(port=self.port, socket_dir=self.directory))

    def start(self) -> None:
        """Starts it and waits until it accepts connections."""
        self._run(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "30",
            "start",
            timeout=40,
        )
        self.running = True

    def stop(self) -> None:
        """Stops it at once: backends are killed, connections drop, new ones are refused."""
        self._run(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "immediate",
            "-w",
            "stop",
            timeout=30,
        )
        self.running = False

    def destroy(self) -> None:
        """Stops it if it runs and removes the cluster; safe to call on any state."""
        try:
            if self.running or (self.data / "postmaster.pid").exists():
                self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            self._kill_postmaster()
        finally:
            self.running = False
            shutil.rmtree(self.directory, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        # pg_ctl could not stop it: end the postmaster this cluster's pid file names.
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of `database` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Creates database `name` and returns its SQLAlchemy URL."""
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
