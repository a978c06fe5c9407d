"""A DAG for the compatibility subset: the sensor in poke mode (the example DAG defers)."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_ibflex.operators.ibflex import IBFlexSendRequestOperator
from airflow_provider_ibflex.sensors.ibflex import IBFlexStatementSensor

with DAG(
    "ibflex_compat_poke",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={"query_id": "42", "destination": ""},
):
    send = IBFlexSendRequestOperator(task_id="send", query_id="{{ params.query_id }}")
    IBFlexStatementSensor(
        task_id="land",
        reference_code=send.output,
        destination="{{ params.destination }}",
        url="{{ ti.xcom_pull(task_ids='send', key='statement_url') }}",
        deferrable=False,
        poke_interval=0.2,
        timeout=60,
    )
