"""Weekly upkeep of the Delta tables ``ibflex_statement_to_storage`` merges statements into.

Daily merges leave many small files, and every version keeps the files it replaced: this compacts the
small files and removes what no version of the last 30 days needs, so time travel reaches back at least
that far. The destination comes from the ``destination_base`` param, else the
``ibflex_destination_base`` Variable, else the same local folder as the daily DAG.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_ibflex.operators.tables import IBFlexDeltaMaintenanceOperator

LOCAL_BASE = "file://" + os.path.join(
    os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "statements"
)
BASE = "{{ params.destination_base or var.value.get('ibflex_destination_base', '" + LOCAL_BASE + "') }}"

with DAG(
    dag_id="ibflex_delta_maintenance",
    description="Compact and vacuum the Interactive Brokers Flex Delta tables, once a week",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "destination_base": Param(
            "", type="string", description="e.g. s3://bucket/prefix; empty: Variable or local"
        ),
    },
    tags=["ibflex", "example"],
) as dag:
    IBFlexDeltaMaintenanceOperator(
        task_id="compact_and_vacuum",
        destination=BASE + "/ibflex/delta",
        vacuum_retention=timedelta(days=30),
    )
