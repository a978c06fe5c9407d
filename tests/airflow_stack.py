"""A real multi-process Airflow on 127.0.0.1 for the system test and the benchmarks: PostgreSQL, the
api-server, scheduler, dag-processor, triggerers and (for Celery) workers and Redis, plus the Flex
simulator in its own process, all started and stopped here.

Every process runs in its own session and is stopped by its process group; everything lives in one
Airflow home. Nothing listens beyond 127.0.0.1: no log server is started (logs are read from the
shared local folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.services import free_port, postgres_server, redis_server

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """A running Airflow: its home, API base URL, environment, processes and the simulator's URL."""

    home: Path
    api: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    simulator: str = ""

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.home / f"{name}.log").open("wb")
        process = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home
        )
        self.processes.append(process)
        return process

    def airflow(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start(name, str(BIN / "airflow"), *args)

    def stop(self) -> None:
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=10)

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.api}/api/v2{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def run_dag(self, dag_id: str, run_id: str, timeout: float, conf: dict[str, Any] | None = None) -> str:
        """Unpause, trigger and wait for a DAG run; return its final state."""
        api = f"{self.api}/api/v2"
        requests.patch(f"{api}/dags/{dag_id}", json={"is_paused": False}, timeout=30).raise_for_status()
        body = {"dag_run_id": run_id, "logical_date": "2026-11-20T00:00:00Z", "conf": conf or {}}
        requests.post(f"{api}/dags/{dag_id}/dagRuns", json=body, timeout=30).raise_for_status()

        def finished() -> str | None:
            state = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        return str(wait_until(f"the DAG run {dag_id}", finished, timeout))


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def wait_until(what: str, check: Any, timeout: float) -> Any:
    """Call ``check`` every second until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (requests.RequestException, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def airflow_stack(
    home: Path,
    simulator_config: dict[str, Any],
    *,
    executor: str = "LocalExecutor",
    workers: int = 0,
    triggerers: int = 1,
    parallelism: int = 16,
    dag_ids: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start Airflow with the example DAGs against the simulator; stop everything afterwards.

    :param home: an empty folder for the Airflow home.
    :param simulator_config: the simulator's configuration (its JSON form).
    :param executor: ``LocalExecutor`` or ``CeleryExecutor`` (then Redis is the broker, and the token
        budget is kept in Redis too, as a deployment on several machines would).
    :param workers: Celery workers to start.
    :param triggerers: triggerers to start.
    :param parallelism: Airflow's ``[core] parallelism`` (and Celery's concurrency per worker).
    :param dag_ids: wait until these DAGs are parsed.
    :param extra_env: more environment for every Airflow process (settings, connections).
    """
    shutil.copytree(REPO / "example_dags", home / "dags")
    port = free_port()
    (home / "simulator.json").write_text(json.dumps(simulator_config))
    with contextlib.ExitStack() as services:
        database = services.enter_context(postgres_server())
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Only the runs a test or benchmark triggers: no scheduled run competes for the token.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        }
        if executor == "CeleryExecutor":
            broker = services.enter_context(redis_server())
            env["AIRFLOW__CELERY__BROKER_URL"] = broker
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + database
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(parallelism)
            # The token's budget in Redis: what a deployment on several machines configures.
            env["AIRFLOW_CONN_IBFLEX_BUDGET"] = broker[: -len("/0")] + "/1"
            env["AIRFLOW__IBFLEX__RATE_LIMIT_CONN_ID"] = "ibflex_budget"
        env.update(extra_env or {})
        stack = Stack(home, f"http://127.0.0.1:{port}", env)
        subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
        )
        try:
            ready = home / "simulator.ready"
            stack.start(
                "simulator",
                sys.executable,
                "-m",
                "airflow_provider_ibflex.simulator",
                "--config",
                str(home / "simulator.json"),
                "--ready-file",
                str(ready),
            )
            info = wait_until("the simulator", lambda: ready.exists() and json.loads(ready.read_text()), 30)
            env["AIRFLOW_CONN_IBFLEX_DEFAULT"] = json.dumps(info["connection"])
            stack.simulator = info["base_url"]
            stack.airflow("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
            stack.airflow("scheduler", "scheduler", "--skip-serve-logs")
            stack.airflow("dag-processor", "dag-processor")
            for number in range(triggerers):
                stack.airflow(f"triggerer-{number}", "triggerer", "--skip-serve-logs")
            for number in range(workers):
                stack.airflow(
                    f"worker-{number}", "celery", "worker", "--skip-serve-logs", "-H", f"worker{number}@%h"
                )

            def healthy() -> bool:
                health = stack.get("/monitor/health")
                parts = ("scheduler", "triggerer", "dag_processor")
                return all(health[part]["status"] == "healthy" for part in parts)

            wait_until("a healthy Airflow", healthy, 180)
            for dag_id in dag_ids:
                wait_until(f"{dag_id} to be parsed", lambda dag_id=dag_id: stack.get(f"/dags/{dag_id}"), 120)
            yield stack
        finally:
            stack.stop()
    leftovers = [p.pid for p in stack.processes if p.poll() is None]
    assert leftovers == [], f"processes left running: {leftovers}"
