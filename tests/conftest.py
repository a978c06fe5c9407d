"""Shared fixtures: an isolated Airflow home, the simulator, connections from env vars, leak checks."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Airflow reads its configuration at import: isolate it before anything imports airflow.
_HOME = Path(tempfile.mkdtemp(prefix="ibflex-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")
# dag.test() runs DAGs from the configured bundle: tests copy their DAG files here.
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(_HOME / "dags"))
# OpenLineage events of every task the tests run, one JSON line each, for the lineage test to read.
OPENLINEAGE_EVENTS = _HOME / "openlineage.jsonl"
os.environ.setdefault(
    "AIRFLOW__OPENLINEAGE__TRANSPORT",
    json.dumps({"type": "file", "log_file_path": str(OPENLINEAGE_EVENTS), "append": True}),
)

import pytest  # noqa: E402

from airflow_provider_ibflex.simulator import FlexSimulator  # noqa: E402

pytest_plugins = ["airflow_provider_ibflex.simulator.pytest_plugin", "tests.faults"]
# The compatibility subset runs against the built wheel, in venvs of its own (make compat).
collect_ignore = ["compat"]

# Extras that keep tests fast: no pacing, short waits; tests of pacing and throttling set their own.
FAST_EXTRAS: dict[str, Any] = {
    "min_interval": 0,
    "max_requests_per_minute": 0,
    "throttle_wait": 0.05,
    "backoff_max": 0.05,
    "max_attempts": 3,
    "connect_timeout": 2,
    "read_timeout": 2,
}


def new_token() -> str:
    """A distinctive token: 24 digits that appear nowhere else."""
    return "9" + "".join(secrets.choice("0123456789") for _ in range(23))


@pytest.fixture
def token(flex_simulator: FlexSimulator) -> str:
    """A valid token registered with the simulator."""
    return flex_simulator.add_token(new_token())


@pytest.fixture
def make_conn(monkeypatch: pytest.MonkeyPatch, flex_simulator: FlexSimulator) -> Callable[..., str]:
    """Create an ``ibflex`` connection to the simulator via ``AIRFLOW_CONN_<ID>``; returns its id."""
    counter = iter(range(10_000))

    def make(token: str, *, host: str | None = None, **extra: Any) -> str:
        conn_id = f"ibflex_test_{next(counter)}"
        import json

        body = {
            "conn_type": "ibflex",
            "password": token,
            "host": host if host is not None else flex_simulator.base_url,
            "extra": {**FAST_EXTRAS, **extra},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))
        return conn_id

    return make


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "landing"
    return path


def files_under(path: Path) -> list[str]:
    """Every file below ``path`` (hidden ones too), relative, sorted."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture
def no_token_leak(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[str, Any], None]]:
    """Capture every log record at DEBUG; ``check(token, *values)`` asserts the token is nowhere."""
    import logging

    caplog.set_level(logging.DEBUG)

    def check(token: str, *values: Any) -> None:
        for record in caplog.records:
            assert token not in record.getMessage(), f"token leaked in log: {record.name}"
        for value in values:
            assert token not in repr(value), f"token leaked in {type(value).__name__}"

    yield check


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """The token-leak check runs after every other test, whatever the order of the files."""
    last = [item for item in items if item.nodeid.startswith("tests/test_token_leaks.py")]
    items[:] = [item for item in items if item not in last] + last


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault suite's counts when it ran."""
    from tests.faults import REPORT

    if not REPORT["faults injected"]:
        return
    terminalreporter.section("reliability")
    for name, count in REPORT.items():
        terminalreporter.write_line(f"{name}: {count}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL on 127.0.0.1 (Debian's package; ``make test`` installs it)."""
    from tests.services import postgres_server

    with postgres_server("budgets") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on 127.0.0.1 (Debian's package; ``make test`` installs it)."""
    from tests.services import redis_server

    with redis_server() as url:
        yield url


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


async def first_event(trigger: Any) -> dict[str, Any]:
    """Run a trigger until its first event, as the triggerer would; return the event's payload."""
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


class MotoS3:
    """moto's S3 server on 127.0.0.1 (region eu-west-2: moto refuses s3fs's location constraint in
    us-east-1), with a boto3 client and the ``AIRFLOW_CONN_<ID>`` JSON of an ``aws`` connection to it.

    :param port: the port, 0 for any free one (give the old port to bring a stopped server back).
    :param own_process: run the server in a process of its own, for clients that hold the GIL while
        they wait for it (delta-rs).
    """

    REGION = "eu-west-2"

    def __init__(self, port: int = 0, own_process: bool = False) -> None:
        import boto3

        self.process: Any = None
        if own_process:
            import subprocess
            import sys

            from tests.services import _wait_for_port, free_port

            self.port = port or free_port()
            command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_for_port(self.port, "moto", self.process)
            host = "127.0.0.1"
        else:
            from moto.server import ThreadedMotoServer

            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
            self.server.start()
            host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=self.REGION,
        )

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.REGION})
        return name

    def connection(self, **extra: Any) -> str:
        import json

        body = {"endpoint_url": self.endpoint, "region_name": self.REGION, **extra}
        return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": body})

    def keys(self, bucket: str) -> list[str]:
        return [item["Key"] for item in self.client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        else:
            self.server.stop()


@pytest.fixture
def moto_s3() -> Iterator[MotoS3]:
    """A fresh moto S3 server for one test."""
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def moto_s3_process() -> Iterator[MotoS3]:
    """A fresh moto S3 server in a process of its own."""
    server = MotoS3(own_process=True)
    yield server
    server.stop()
