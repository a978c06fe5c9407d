"""One token, many processes: the example ``ibflex_many_queries`` DAG on a CeleryExecutor Airflow (two
workers, two triggerers, Redis as broker and budget store, PostgreSQL) against the simulator with the
service's real limits (1 request/s, 10 per minute per token), in real time.

Reports what the service saw (requests, 1018s, the smallest spacing, the most requests in any 60 s)
and the DAG run's wall time against the ideal schedule: SendRequests paced 1/s, each statement
downloaded as soon as it is ready and the budget allows, with no polling at all.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_provider_ibflex.pacing.budget import Ask, BudgetState, Limits, release, try_acquire
from airflow_provider_ibflex.simulator.process import request_log

TOKEN = "660011223344556677889900"
DAG_ID = "ibflex_many_queries"
SERVICE_LIMITS = Limits(min_interval=1.0, per_window=10, window=60.0)


def ideal_schedule(queries: int, generation_seconds: float, limits: Limits = SERVICE_LIMITS) -> float:
    """Seconds from the first SendRequest to the last download in the best schedule the limits allow.

    :param queries: how many queries (one SendRequest and one download each).
    :param generation_seconds: how long each statement takes to be ready after its SendRequest.
    :param limits: the token's limits.
    """
    state, now, sends = BudgetState(), 0.0, []

    def take(at: float) -> float:
        nonlocal state
        ask = Ask(f"t{at}")
        while True:
            state, grant = try_acquire(state, limits, at, ask)
            if grant.granted:
                state = release(state, at, ask.holder, limits)
                return at
            at += grant.wait

    for _ in range(queries):
        now = take(now)
        sends.append(now)
    last = now
    for sent in sends:
        last = take(max(sent + generation_seconds, last))
    return last


def bench_distributed(workdir: Path, queries: int = 10, generation_seconds: float = 5.0) -> dict[str, Any]:
    """Run the many-queries DAG on Celery and measure it.

    :param workdir: a folder for the Airflow home.
    :param queries: how many queries on the one token.
    :param generation_seconds: how long each statement takes to generate.
    """
    from tests.airflow_stack import airflow_stack

    ids = {str(300001 + index): "xml" for index in range(queries)}
    config = {
        "tokens": {TOKEN: {}},
        "queries": {query_id: {"generation_seconds": generation_seconds, "size": 50_000} for query_id in ids},
        "rate_limit": [1.0, 10],
        "record_digests": False,
    }
    home = workdir / "airflow-celery"
    home.mkdir()
    with airflow_stack(
        home, config, executor="CeleryExecutor", workers=2, triggerers=2, parallelism=8, dag_ids=(DAG_ID,)
    ) as stack:
        state = stack.run_dag(DAG_ID, "bench", 1800, conf={"queries": ids})
        run = stack.get(f"/dags/{DAG_ID}/dagRuns/bench")
        log = request_log(stack.simulator)
    times = sorted(row["at"] for row in log)
    started, ended = (datetime.fromisoformat(run[key]) for key in ("start_date", "end_date"))
    wall = (ended - started).total_seconds()
    ideal = ideal_schedule(queries, generation_seconds)
    return {
        "queries": queries,
        "generation_s": generation_seconds,
        "state": state,
        "statements_served": sum(row["answer"] == "statement" for row in log),
        "requests": len(log),
        "throttled_1018": sum(row["answer"] == "1018" for row in log),
        "min_spacing_s": min((b - a for a, b in itertools.pairwise(times)), default=None),
        "max_per_60s": max((sum(1 for t in times if start <= t < start + 60) for start in times), default=0),
        "wall_s": wall,
        "ideal_s": ideal,
        "vs_ideal": wall / ideal if ideal else None,
    }
