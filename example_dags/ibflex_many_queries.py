"""Several Flex Queries in one DAG through dynamic task mapping: one request and one landing each."""

from __future__ import annotations

import json
import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_ibflex.operators.ibflex import IBFlexSendRequestOperator
from airflow_provider_ibflex.sensors.ibflex import IBFlexStatementSensor

LOCAL_BASE = "file://" + os.path.join(
    os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "statements"
)
# Query id -> file extension (a query's format, XML or CSV, is set in Account Management).
QUERIES = {"100001": "xml", "100002": "csv"}

with DAG(
    dag_id="ibflex_many_queries",
    description="Several Flex Queries, one mapped task per query",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["ibflex", "example"],
) as dag:
    send_requests = IBFlexSendRequestOperator.partial(task_id="send_request").expand(query_id=list(QUERIES))
    IBFlexStatementSensor.partial(
        task_id="land_statement",
        url="{{ ti.xcom_pull(task_ids='send_request', key='statement_url', map_indexes=ti.map_index) }}",
        destination=(
            "{% set query = " + json.dumps(list(QUERIES.items())) + "[ti.map_index] %}"
            "{{ var.value.get('ibflex_destination_base', '" + LOCAL_BASE + "') }}"
            "/ibflex/{{ data_interval_start | ds }}/{{ query[0] }}.{{ query[1] }}"
        ),
        deferrable=True,
        poke_interval=10,
        timeout=60 * 60,
    ).expand(reference_code=send_requests.output)
