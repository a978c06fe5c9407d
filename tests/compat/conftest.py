"""The compatibility subset: what must hold on every supported Airflow (2.11 to 3.3) and Python (3.10 to
3.13), run against the built wheel in a venv of its own by ``scripts/compat.py``.

It imports nothing from the rest of the test suite, and nothing from Airflow but what
``apache-airflow-providers-common-compat`` and the version's own stable modules give.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Airflow reads its configuration at import: isolate it before anything imports airflow.
_HOME = Path(tempfile.mkdtemp(prefix="ibflex-compat-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")

import pytest  # noqa: E402

from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
FAST_EXTRAS: dict[str, Any] = {
    "min_interval": 0,
    "max_requests_per_minute": 0,
    "throttle_wait": 0.05,
    "backoff_max": 0.05,
    "max_attempts": 3,
    "connect_timeout": 2,
    "read_timeout": 2,
}


def pytest_configure(config: pytest.Config) -> None:
    # Nothing of ours may call an API the running Airflow deprecates (a module filter, so that it
    # covers every submodule, which `-W` on the command line would not).
    for module in ("airflow_provider_ibflex", "compat"):
        config.addinivalue_line("filterwarnings", f"error::DeprecationWarning:{module}")


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> None:
    """A migrated SQLite database, and the DAGs folder with the example DAGs and this subset's."""
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    for source in [*sorted((HERE / "example_dags").glob("*.py")), HERE / "compat_dags.py"]:
        shutil.copy(source, dags / source.name)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def simulator() -> Iterator[FlexSimulator]:
    # No service-side rate limit: the connections below pace nothing (the budget has its own tests).
    with FlexSimulator(SimulatorConfig(rate_limit=None)) as running:
        yield running


@pytest.fixture
def token(simulator: FlexSimulator) -> str:
    return simulator.add_token("9" + "".join(secrets.choice("0123456789") for _ in range(23)))


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch, simulator: FlexSimulator) -> Callable[..., str]:
    """An ``ibflex`` connection to the simulator from an ``AIRFLOW_CONN_<ID>`` variable."""

    def make(token: str, conn_id: str = "ibflex_default", **extra: Any) -> str:
        body = {"conn_type": "ibflex", "password": token, "host": simulator.base_url}
        body["extra"] = {**FAST_EXTRAS, **extra}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))
        return conn_id

    return make
