"""Real servers from Debian's packages on 127.0.0.1, started and stopped by the tests and benchmarks
themselves: PostgreSQL (Airflow's metadata database) and Redis (Celery's broker, the budget store)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(
    port: int, what: str, process: subprocess.Popen[bytes] | None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            raise RuntimeError(f"{what} did not start on 127.0.0.1:{port}")
        time.sleep(0.05)


class RedisServer:
    """A private redis-server without persistence (as a cache would be run), which can be stopped and
    started again on the same port: a restart loses everything it held."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or ""
        if not self.binary:
            raise RuntimeError("Debian's redis-server package is needed (make test installs it)")
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="ibflex-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([self.binary, *args], cwd=self.folder, stdout=subprocess.DEVNULL)
        _wait_for_port(self.port, "redis-server", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server; yields its URL (database 0)."""
    with running_redis() as server:
        yield server.url


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A private redis-server, for tests that stop and restart it."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError("Debian's postgresql package is needed (make test installs it)")
    return found[-1]


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: root runs it as Debian's postgres user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 with a database, which can be restarted.

    :param database: the database to create.
    """

    def __init__(self, database: str = "airflow") -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ibflex-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self.data, self.port = self.folder / "data", free_port()
        self.url = f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/{database}"
        subprocess.run(
            _as_postgres(
                [_postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "airflow", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        self.start()
        subprocess.run(
            [_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow", database],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
        options += " -c fsync=off -c max_connections=200"
        log = str(self.folder / "log")
        subprocess.run(
            _as_postgres(
                [_postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        _wait_for_port(self.port, "postgres", None)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(database: str = "airflow") -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1 with a ``database``; yields its SQLAlchemy URL."""
    with running_postgres(database) as server:
        yield server.url


@contextlib.contextmanager
def running_postgres(database: str = "airflow") -> Iterator[PostgresServer]:
    """A private PostgreSQL, for tests that restart it."""
    server = PostgresServer(database)
    try:
        yield server
    finally:
        server.remove()
