"""Daily: request a Flex Query's statement for the data interval, wait for it, land it in storage,
and turn it into typed tables.

send_request (worker) -> land_statement (deferrable sensor: waits in the triggerer, downloads on a
worker) -> ``<base>/ibflex/<date>/<query_id>.xml`` -> statement_to_tables -> one Parquet file per
section and row element under ``<base>/ibflex/tables/``, and statement_to_delta -> the same rows
merged into one Delta Lake table per section and row element under ``<base>/ibflex/delta/``, holding
every day (both need ``airflow-provider-ibflex[tables]``).
The base comes from the ``destination_base`` param, else the ``ibflex_destination_base`` Variable,
else a local folder. Point it at real data by
setting the ``ibflex_default`` connection's password to your token and ``query_id`` to your query.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_ibflex.operators.ibflex import IBFlexSendRequestOperator
from airflow_provider_ibflex.operators.tables import IBFlexStatementToTablesOperator, table_asset
from airflow_provider_ibflex.sensors.ibflex import IBFlexStatementSensor

LOCAL_BASE = "file://" + os.path.join(
    os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "statements"
)
BASE = "{{ params.destination_base or var.value.get('ibflex_destination_base', '" + LOCAL_BASE + "') }}"
# DAGs can be scheduled on these: each run's event carries the table's new rows and file (for the
# Delta table, its URI and new version).
TRADES = table_asset("Trades/Trade", name="ibflex_trades")
TRADES_HISTORY = table_asset("Trades/Trade", output_format="delta", name="ibflex_trades_history")

with DAG(
    dag_id="ibflex_statement_to_storage",
    description="Interactive Brokers Flex statement -> object storage, once a day",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "query_id": Param("100001", type="string", description="Flex Query id from Account Management"),
        "destination_base": Param(
            "", type="string", description="e.g. s3://bucket/prefix; empty: Variable or local"
        ),
    },
    tags=["ibflex", "example"],
) as dag:
    send_request = IBFlexSendRequestOperator(
        task_id="send_request",
        query_id="{{ params.query_id }}",
        # The statement covers exactly this run's data interval (its last day is the day before the
        # interval's end; a manual run's interval may be a single instant), so backfills fetch their days.
        from_date="{{ data_interval_start | ds_nodash }}",
        to_date="{{ [data_interval_start, data_interval_end - macros.timedelta(days=1)] | max | ds_nodash }}",
    )
    land_statement = IBFlexStatementSensor(
        task_id="land_statement",
        reference_code=send_request.output,
        url="{{ ti.xcom_pull(task_ids='send_request', key='statement_url') }}",
        query_id="{{ params.query_id }}",  # named in the task's OpenLineage events
        destination=BASE + "/ibflex/{{ data_interval_start | ds }}/{{ params.query_id }}.xml",
        deferrable=True,
        poke_interval=10,
        timeout=60 * 60,
    )
    statement_to_tables = IBFlexStatementToTablesOperator(
        task_id="statement_to_tables",
        statement=land_statement.output,
        destination=BASE + "/ibflex/tables",
        name="{{ data_interval_start | ds }}-{{ params.query_id }}",
        # Reports the sections, tables and columns that are new since the day before.
        previous_manifest=(
            BASE + "/ibflex/tables/_manifests/"
            "{{ macros.ds_add(data_interval_start | ds, -1) }}-{{ params.query_id }}.json"
        ),
        outlets=[TRADES],
    )
    statement_to_delta = IBFlexStatementToTablesOperator(
        task_id="statement_to_delta",
        statement=land_statement.output,
        destination=BASE + "/ibflex/delta",
        output_format="delta",
        name="{{ data_interval_start | ds }}-{{ params.query_id }}",
        outlets=[TRADES_HISTORY],
    )
    send_request >> land_statement >> [statement_to_tables, statement_to_delta]
