"""Chaos on a real multi-process Airflow (PostgreSQL, LocalExecutor, two triggerers): ten queries on one
token against the service's real limits, while the budget's store goes down for 30 s and comes back
(Redis without persistence, which forgets everything; then PostgreSQL, restarted), a task process is
SIGKILLed with its request in flight, and a triggerer is SIGTERMed while its triggers wait.

Every statement must land, no request may draw 1018, come less than 1 s after another or be the 11th
in a minute, none may be sent while the store is down, and no task may fail: only the killed one
needs its retry (every task may retry once, and no other may use it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from airflow_provider_ibflex.simulator.process import add_fault, request_log
from tests.airflow_stack import Stack, airflow_stack, wait_until
from tests.conftest import new_token
from tests.services import running_postgres, running_redis

pytestmark = [pytest.mark.system, pytest.mark.chaos]

DAG_ID = "ibflex_many_queries"
QUERIES = {str(300001 + index): "xml" for index in range(10)}
OUTAGE_SECONDS = 30.0


@contextlib.contextmanager
def budget_store(kind: str) -> Iterator[tuple[dict[str, str], Any]]:
    """A store for the budget, apart from Airflow's database, and the settings that point at it."""
    if kind == "redis":
        with running_redis() as server:
            url = server.url.rsplit("/", 1)[0] + "/1"
            yield (
                {"AIRFLOW_CONN_IBFLEX_BUDGET": url, "AIRFLOW__IBFLEX__RATE_LIMIT_CONN_ID": "ibflex_budget"},
                server,
            )
    else:
        with running_postgres("budgets") as server:
            url = server.url.replace("postgresql+psycopg2://", "postgres://")
            yield (
                {"AIRFLOW_CONN_IBFLEX_BUDGET": url, "AIRFLOW__IBFLEX__RATE_LIMIT_CONN_ID": "ibflex_budget"},
                server,
            )


def trigger_run(stack: Stack, run_id: str) -> None:
    api = f"{stack.api}/api/v2"
    requests.patch(f"{api}/dags/{DAG_ID}", json={"is_paused": False}, timeout=30).raise_for_status()
    body = {"dag_run_id": run_id, "logical_date": "2026-11-20T00:00:00Z", "conf": {"queries": QUERIES}}
    requests.post(f"{api}/dags/{DAG_ID}/dagRuns", json=body, timeout=30).raise_for_status()


def sends(stack: Stack) -> list[dict[str, Any]]:
    return [row for row in request_log(stack.simulator) if row["call"] == "send"]


def task_process_talking_to(port: int) -> int | None:
    """A task process (not a triggerer, whose pooled connections stay open) with a connection open to
    the simulator: the task whose SendRequest hangs there."""
    for connection in psutil.net_connections(kind="tcp"):
        remote = connection.raddr
        if not (remote and remote.port == port and connection.status == psutil.CONN_ESTABLISHED):
            continue
        with contextlib.suppress(psutil.Error, TypeError):
            if "triggerer" not in " ".join(psutil.Process(connection.pid).cmdline()):
                return int(connection.pid)
    return None


def kill_the_hanging_worker(stack: Stack) -> None:
    """The third SendRequest hangs at the simulator: SIGKILL the task process that sent it."""
    wait_until("the hanging SendRequest", lambda: len(sends(stack)) >= 3, 300)
    port = int(stack.simulator.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    os.kill(
        wait_until("the hanging task's process", lambda: task_process_talking_to(port), 30), signal.SIGKILL
    )


def stop_a_triggerer_while_its_triggers_wait(stack: Stack, run_id: str) -> None:
    def deferred() -> bool:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
        instances = stack.get(path, limit=100)["task_instances"]
        return sum(1 for t in instances if t["state"] == "deferred") >= 2

    wait_until("sensors waiting in the triggerers", deferred, 300)
    triggerer = next(p for p in stack.processes if "triggerer" in " ".join(map(str, p.args)))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(triggerer.pid, signal.SIGTERM)


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_ten_queries_on_one_token_survive_store_restarts_kills_and_a_stopped_triggerer(
    store: str, tmp_path: Path
) -> None:
    token = new_token()
    queries = {query_id: {"generation_seconds": 5, "size": 50_000} for query_id in QUERIES}
    config = {"tokens": {token: {}}, "queries": queries, "rate_limit": [1.0, 10]}
    run_id = f"chaos_{store}"
    with budget_store(store) as (settings, server):
        settings |= {
            "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "5",
        }
        with airflow_stack(
            tmp_path / "home", config, triggerers=2, dag_ids=(DAG_ID,), extra_env=settings
        ) as stack:
            add_fault(stack.simulator, "hang", step="send", skip=2, times=1, seconds=20)
            trigger_run(stack, run_id)
            with ThreadPoolExecutor(2) as pool:
                chaos = [
                    pool.submit(kill_the_hanging_worker, stack),
                    pool.submit(stop_a_triggerer_while_its_triggers_wait, stack, run_id),
                ]
                for done in chaos:
                    done.result(timeout=400)
            wait_until("six requests", lambda: len(request_log(stack.simulator)) >= 6, 300)
            server.stop()
            down = (time.time(), time.time() + OUTAGE_SECONDS)
            time.sleep(OUTAGE_SECONDS)
            server.start()
            down = (down[0], time.time())

            def finished() -> str | None:
                state = stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
                return state if state in ("success", "failed") else None

            state = wait_until("the DAG run", finished, 900)
            instances = stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", limit=100)[
                "task_instances"
            ]
            log = request_log(stack.simulator)

    assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in instances]
    assert {t["state"] for t in instances} == {"success"}
    retried = [(t["task_id"], t["map_index"]) for t in instances if t["try_number"] > 1]
    assert len(retried) <= 1 and all(task == "send_request" for task, _ in retried), retried
    landed = tmp_path / "home" / "statements" / "ibflex" / "2026-11-20"
    for query_id in QUERIES:
        assert (landed / f"{query_id}.xml").read_bytes().rstrip().endswith(b"</FlexQueryResponse>")

    answers = [row["answer"] for row in log]
    assert "1018" not in answers, answers
    times = sorted(row["at"] for row in log)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 1.0, f"two requests {min(gaps):.3f} s apart"
    assert max(sum(1 for t in times if start <= t < start + 60) for start in times) <= 10
    # A request granted just before the store went down may still arrive in its first instant.
    during = [t for t in times if down[0] + 1.0 < t < down[1]]
    assert during == [], f"{len(during)} requests while the store was down"
