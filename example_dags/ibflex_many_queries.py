"""Several Flex Queries on one token in one DAG: one mapped request and one landing per query.

The queries come from the ``queries`` param (query id -> file extension, the format set for the query
in Account Management). Every task that uses the token, on any worker or triggerer, takes its turns
from the token's shared request budget (1 request/s, 10/min), so the mapped tasks never draw 1018:
they wait for their turn instead. A wait for the token is never a failed attempt.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_ibflex.operators.ibflex import IBFlexSendRequestOperator
from airflow_provider_ibflex.sensors.ibflex import IBFlexStatementSensor

LOCAL_BASE = "file://" + os.path.join(
    os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "statements"
)

with DAG(
    dag_id="ibflex_many_queries",
    description="Several Flex Queries on one token, one mapped task per query",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "queries": Param(
            {"100001": "xml", "100002": "csv"},
            type="object",
            description="Flex Query id -> file extension (xml or csv, as the query is set up)",
        ),
    },
    tags=["ibflex", "example"],
) as dag:

    @task
    def query_ids(**context: Any) -> list[str]:
        """The query ids to request, in the order the mapped tasks take them."""
        return [str(query_id) for query_id in context["params"]["queries"]]

    send_requests = IBFlexSendRequestOperator.partial(
        task_id="send_request",
        # Waiting for the token's turn is bounded by this, not by a number of attempts.
        execution_timeout=timedelta(minutes=30),
    ).expand(query_id=query_ids())
    IBFlexStatementSensor.partial(
        task_id="land_statement",
        url="{{ ti.xcom_pull(task_ids='send_request', key='statement_url', map_indexes=ti.map_index) }}",
        destination=(
            "{% set query_id = (params.queries | list)[ti.map_index] %}"
            "{{ var.value.get('ibflex_destination_base', '" + LOCAL_BASE + "') }}"
            "/ibflex/{{ data_interval_start | ds }}/{{ query_id }}.{{ params.queries[query_id] }}"
        ),
        deferrable=True,
        poke_interval=10,
        timeout=60 * 60,
    ).expand(reference_code=send_requests.output)
