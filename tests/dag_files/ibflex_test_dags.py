"""DAGs for the end-to-end tests: one per sensor configuration; query and destination come from params."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Asset

from airflow_provider_ibflex.operators.ibflex import IBFlexSendRequestOperator
from airflow_provider_ibflex.sensors.ibflex import IBFlexStatementSensor

ASSET_URI = "file://" + os.path.join(os.environ.get("AIRFLOW_HOME", "/tmp"), "asset-test", "statement.xml")
STATEMENT_ASSET = Asset(name="ibflex_test_statement", uri=ASSET_URI)

CONFIGS: dict[str, dict[str, object]] = {}
for mode, deferrable in (("deferred", True), ("poke", False)):
    CONFIGS[f"ibflex_test_{mode}"] = {"deferrable": deferrable}
    for soft in (False, True):
        CONFIGS[f"ibflex_test_{mode}_timeout{'_soft' if soft else ''}"] = {
            "deferrable": deferrable,
            "timeout": 1.5,
            "soft_fail": soft,
        }
CONFIGS["ibflex_test_retries"] = {"deferrable": True, "retries": 3}
CONFIGS["ibflex_test_s3"] = {"deferrable": True, "destination_conn_id": "moto_s3"}
CONFIGS["ibflex_test_asset"] = {"deferrable": True, "outlets": [STATEMENT_ASSET]}

for dag_id, sensor_kwargs in CONFIGS.items():
    with DAG(
        dag_id, schedule=None, start_date=datetime(2026, 1, 1), params={"query_id": "42", "destination": ""}
    ):
        send = IBFlexSendRequestOperator(task_id="send", query_id="{{ params.query_id }}")
        IBFlexStatementSensor(
            task_id="land",
            reference_code=send.output,
            destination="{{ params.destination }}",
            url="{{ ti.xcom_pull(task_ids='send', key='statement_url') }}",
            **{"poke_interval": 0.2, "timeout": 30, **sensor_kwargs},  # type: ignore[arg-type]
        )

with DAG(
    "ibflex_test_tables",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={"statement": "", "destination": ""},
    default_args={"retries": 3},
):
    from airflow_provider_ibflex.operators.tables import IBFlexStatementToTablesOperator

    IBFlexStatementToTablesOperator(
        task_id="tables", statement="{{ params.statement }}", destination="{{ params.destination }}"
    )
