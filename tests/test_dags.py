"""End to end in Airflow: dag.test() runs the operator, the sensor and its trigger against the simulator.

All dag.test() calls live in this one module so that Airflow's start-up cost is paid once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ibflex.simulator import FlexSimulator
from tests.conftest import FAST_EXTRAS, MotoS3, files_under, new_token, sha256_of

REPO = Path(__file__).resolve().parents[1]
LOGICAL_DATE = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.fixture(scope="module", autouse=True)
def airflow_db() -> None:
    """A migrated SQLite database and a DAGs folder with the example and test DAGs."""
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    for source in [
        *sorted((REPO / "example_dags").glob("*.py")),
        REPO / "tests/dag_files/ibflex_test_dags.py",
    ]:
        shutil.copy(source, dags / source.name)
    exe = os.path.join(os.path.dirname(sys.executable), "airflow")
    subprocess.run([exe, "db", "migrate"], check=True, capture_output=True, timeout=300)


@pytest.fixture
def conn_env(monkeypatch: pytest.MonkeyPatch, flex_simulator: FlexSimulator) -> Callable[..., str]:
    def make(token: str, conn_id: str = "ibflex_default", **extra: Any) -> str:
        body = {"conn_type": "ibflex", "password": token, "host": flex_simulator.base_url}
        body["extra"] = {**FAST_EXTRAS, **extra}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))
        return conn_id

    return make


def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    return bag.get_dag(dag_id)


def run(dag_id: str, logical_date: datetime = LOGICAL_DATE, **conf: Any) -> tuple[dict[str, str], str]:
    """dag.test() one DAG; return each task instance's final state (by task id, map index) and the run id."""
    dag = load_dag(dag_id)
    dag_run = dag.test(logical_date=logical_date, run_conf=conf or None)
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.run_id == dag_run.run_id, TaskInstance.dag_id == dag_id
        )
        states = {
            (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state) for ti in tis
        }
    return states, dag_run.run_id


def xcom_of(run_id: str, task_id: str) -> Any:
    """A task's return value in a run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(XComModel.run_id == run_id, XComModel.task_id == task_id, XComModel.key == "return_value")
            .one()
        )
        return row.value


def asset_events(uri: str) -> list[dict[str, Any]]:
    """The extras of an asset's events, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == uri)
            .order_by(AssetEvent.id)
        )
        return [dict(row.extra) for row in rows]


def xcoms(run_id: str) -> list[Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [row.value for row in session.query(XComModel).filter(XComModel.run_id == run_id)]


@pytest.mark.parametrize("mode", ["deferred", "poke"])
@pytest.mark.parametrize("fmt", ["xml", "csv"])
def test_statement_lands(
    flex_simulator: FlexSimulator, conn_env: Callable[..., str], tmp_path: Path, mode: str, fmt: str
) -> None:
    token = flex_simulator.add_token(new_token())
    conn_env(token)
    flex_simulator.add_query("42", format=fmt, size=200_000, generation_polls=3)
    dest = tmp_path / "out" / f"s.{fmt}"
    states, run_id = run(f"ibflex_test_{mode}", destination=f"file://{dest}")
    assert states == {"send": "success", "land": "success"}
    # In deferred mode the trigger also saw the statement's head before the worker downloaded it.
    served = [r for r in flex_simulator.requests("get") if r.answer == "statement"]
    assert len(served) == (2 if mode == "deferred" else 1)
    assert served[-1].sha256 == sha256_of(dest)
    assert files_under(tmp_path / "out") == [f"s.{fmt}"]
    values = xcoms(run_id)
    (meta,) = [v for v in values if isinstance(v, dict)]
    assert meta == {
        "uri": f"file://{dest}",
        "size": dest.stat().st_size,
        "sha256": sha256_of(dest),
        "format": fmt,
        "reference_code": served[-1].q,
    }
    assert served[-1].q in values
    assert len(flex_simulator.requests("send")) == 1, "the sensor never calls SendRequest"
    assert token not in json.dumps(values, default=str)


def test_deferrable_sensor_lands_at_once_when_ready(
    flex_simulator: FlexSimulator, conn_env: Callable[..., str], tmp_path: Path
) -> None:
    conn_env(flex_simulator.add_token(new_token()))
    flex_simulator.add_query("42")
    states, _ = run("ibflex_test_deferred", destination=f"file://{tmp_path}/s.xml")
    assert states == {"send": "success", "land": "success"}
    assert [r.answer for r in flex_simulator.requests("get")] == ["statement"]


def test_generating_again_at_download_defers_again(
    flex_simulator: FlexSimulator, conn_env: Callable[..., str], tmp_path: Path
) -> None:
    conn_env(flex_simulator.add_token(new_token()))
    flex_simulator.add_query("42", generation_polls=1)
    # poke: 1019; trigger: ready; worker's download: 1019 again; trigger: ready; download: lands.
    flex_simulator.add_fault("error", step="get", code=1019, status="Warn", skip=2)
    states, _ = run("ibflex_test_deferred", destination=f"file://{tmp_path}/s.xml")
    assert states == {"send": "success", "land": "success"}
    answers = [r.answer for r in flex_simulator.requests("get")]
    assert answers == ["1019", "statement", "1019", "statement", "statement"]
    assert files_under(tmp_path) == ["s.xml"]


def test_tight_budget_hands_the_poll_to_the_worker(
    flex_simulator: FlexSimulator, conn_env: Callable[..., str], tmp_path: Path
) -> None:
    """Two requests per window: after SendRequest and the worker's poke, a poll that found the
    statement ready would leave no turn for its download. So the trigger polls nothing: it waits for a
    free turn and hands it to the worker, whose one GetStatement lands the statement."""
    conn_env(flex_simulator.add_token(new_token()), max_requests_per_minute=2, rate_window=1.5)
    flex_simulator.add_query("42", generation_polls=1)
    states, _ = run("ibflex_test_deferred", destination=f"file://{tmp_path}/s.xml")
    assert states == {"send": "success", "land": "success"}
    assert [r.answer for r in flex_simulator.requests("get")] == ["1019", "statement"]
    assert files_under(tmp_path) == ["s.xml"]


def test_fatal_code_fails_without_retries(
    flex_simulator: FlexSimulator, conn_env: Callable[..., str], tmp_path: Path
) -> None:
    conn_env(flex_simulator.add_token(new_token()))
    flex_simulator.add_query("42", generation_polls=1)
    flex_simulator.add_fault("error", step="get", code=1017, skip=1)
    states, _ = run("ibflex_test_retries", destination=f"file://{tmp_path}/s.xml")
    assert states == {"send": "success", "land": "failed"}
    assert len(flex_simulator.requests("send")) == 1
    assert [r.answer for r in flex_simulator.requests("get")] == ["1019", "1017"]
    assert files_under(tmp_path) == []


def test_tables_are_named_after_the_run_day_by_default(tmp_path: Path) -> None:
    from airflow_provider_ibflex.simulator import GeneratedStatement, StatementShape

    landed = tmp_path / "2026-11-20" / "100001.xml"
    landed.parent.mkdir()
    landed.write_bytes(b"".join(GeneratedStatement(StatementShape(content="full", size=20_000)).chunks()))
    states, run_id = run(
        "ibflex_test_tables", statement=f"file://{landed}", destination=f"file://{tmp_path}/t"
    )
    assert states == {"tables": "success"}
    assert "_manifests/2026-11-20-100001.json" in files_under(tmp_path / "t")
    manifest = xcom_of(run_id, "tables")
    assert manifest["name"] == "2026-11-20-100001"
    assert manifest["tables"]["Trades/Trade"]["uri"].endswith(f"/2026-11-20-100001.{manifest['run']}.parquet")


def test_an_unconvertible_statement_fails_the_task_without_retries(tmp_path: Path) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    broken = tmp_path / "statement.xml"
    broken.write_text('<FlexQueryResponse><FlexStatements count="2"><FlexStatement accountId="U1">')
    states, run_id = run(
        "ibflex_test_tables", statement=f"file://{broken}", destination=f"file://{tmp_path}/t"
    )
    assert states == {"tables": "failed"}
    with create_session() as session:
        ti = session.query(TaskInstance).filter(TaskInstance.run_id == run_id).one()
        assert ti.try_number == 1  # a fatal error: the 3 retries were not used
    assert files_under(tmp_path / "t") == []


@pytest.mark.parametrize(("soft", "expected"), [("", "failed"), ("_soft", "skipped")])
@pytest.mark.parametrize("mode", ["deferred", "poke"])
def test_timeout_honours_soft_fail(
    flex_simulator: FlexSimulator,
    conn_env: Callable[..., str],
    tmp_path: Path,
    soft: str,
    expected: str,
    mode: str,
) -> None:
    conn_env(flex_simulator.add_token(new_token()))
    flex_simulator.add_query("42", generation_polls=10_000)
    states, _ = run(f"ibflex_test_{mode}_timeout{soft}", destination=f"file://{tmp_path}/s.xml")
    assert states == {"send": "success", "land": expected}
    assert files_under(tmp_path) == []


def test_asset_event_carries_metadata(flex_simulator: FlexSimulator, conn_env: Callable[..., str]) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    conn_env(flex_simulator.add_token(new_token()))
    flex_simulator.add_query("42")
    landed = Path(os.environ["AIRFLOW_HOME"]) / "asset-test" / "statement.xml"
    states, run_id = run("ibflex_test_asset", destination=f"file://{landed}")
    assert states == {"send": "success", "land": "success"}
    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.source_run_id == run_id]
    assert len(events) == 1
    assert events[0].extra["sha256"] == sha256_of(landed) and events[0].extra["format"] == "xml"


def test_statement_lands_in_s3(
    flex_simulator: FlexSimulator,
    conn_env: Callable[..., str],
    moto_s3: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = moto_s3.bucket("statements")
    monkeypatch.setenv("AIRFLOW_CONN_MOTO_S3", moto_s3.connection())
    conn_env(flex_simulator.add_token(new_token()))
    flex_simulator.add_query("42", size=7_000_000, generation_polls=1)
    states, _ = run("ibflex_test_s3", destination=f"s3://{bucket}/ibflex/2026-11-20/42.xml")
    assert states == {"send": "success", "land": "success"}
    assert moto_s3.keys(bucket) == ["ibflex/2026-11-20/42.xml"]
    body = moto_s3.client.get_object(Bucket=bucket, Key="ibflex/2026-11-20/42.xml")["Body"].read()
    served = [r for r in flex_simulator.requests("get") if r.answer == "statement"]
    assert hashlib.sha256(body).hexdigest() == served[-1].sha256


def test_example_dags_parse_without_errors_or_warnings() -> None:
    import warnings

    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bag = DagBag(dag_folder=str(REPO / "example_dags"))
    assert bag.import_errors == {}
    assert {"ibflex_statement_to_storage", "ibflex_many_queries", "ibflex_delta_maintenance"} <= set(
        bag.dag_ids
    )


def test_example_dag_runs_end_to_end(
    flex_simulator: FlexSimulator,
    conn_env: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    token = flex_simulator.add_token(new_token())
    conn_env(token)
    flex_simulator.add_query("100001", generation_polls=1, content="full", accounts=2, size=80_000)
    monkeypatch.setenv("AIRFLOW_VAR_IBFLEX_DESTINATION_BASE", f"file://{tmp_path}")
    states, run_id = run("ibflex_statement_to_storage")
    assert set(states) == {"send_request", "land_statement", "statement_to_tables", "statement_to_delta"}
    assert set(states.values()) == {"success"}
    files = files_under(tmp_path)
    assert "ibflex/2026-11-20/100001.xml" in files
    assert "ibflex/tables/_manifests/2026-11-20-100001.json" in files
    run_of = json.loads((tmp_path / "ibflex/tables/_manifests/2026-11-20-100001.json").read_text())["run"]
    assert f"ibflex/tables/section=Trades/element=Trade/2026-11-20-100001.{run_of}.parquet" in files
    sent = flex_simulator.requests("send")[0]
    assert (sent.fd, sent.td) == ("20261120", "20261120")

    # The XCom is the manifest (no rows); the day before had no manifest, so everything is new.
    manifest = xcom_of(run_id, "statement_to_tables")
    assert manifest["statements"]["found"] == 2 and "Trades/Trade" in manifest["tables"]
    assert manifest["changes"]["new_tables"] == sorted(manifest["tables"])
    landed = xcom_of(run_id, "land_statement")
    assert manifest["source"]["uri"] == landed["uri"]

    # The Trades/Trade asset got an event carrying its rows and file.
    event = asset_events("ibflex://tables/Trades/Trade")[-1]
    assert event["rows"] == manifest["tables"]["Trades/Trade"]["rows"] > 0
    assert event["uri"] == manifest["tables"]["Trades/Trade"]["uri"]

    # The same rows went into the Delta table, whose asset event names its new version.
    delta = xcom_of(run_id, "statement_to_delta")["tables"]["Trades/Trade"]
    history = asset_events("ibflex://delta/Trades/Trade")[-1]
    assert history["uri"] == delta["uri"] == f"{tmp_path}/ibflex/delta/Trades/Trade"
    assert history["version"] == delta["version"] == 1
    from deltalake import DeltaTable

    assert DeltaTable(delta["uri"]).to_pyarrow_table().num_rows == delta["rows"]

    # A second day's run compares against the first day's manifest, and merges into the same table.
    states, run_id = run("ibflex_statement_to_storage", logical_date=LOGICAL_DATE + timedelta(days=1))
    assert states["statement_to_tables"] == states["statement_to_delta"] == "success"
    assert xcom_of(run_id, "statement_to_tables")["changes"] == {
        "new_sections": [],
        "new_tables": [],
        "new_columns": {},
        "retyped_columns": {},
    }
    assert xcom_of(run_id, "statement_to_delta")["tables"]["Trades/Trade"]["version"] == 2


def test_mapped_example_dag(
    flex_simulator: FlexSimulator,
    conn_env: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    token = flex_simulator.add_token(new_token())
    conn_env(token)
    flex_simulator.add_query("100001", generation_polls=1)
    flex_simulator.add_query("100002", format="csv")
    monkeypatch.setenv("AIRFLOW_VAR_IBFLEX_DESTINATION_BASE", f"file://{tmp_path}")
    states, _ = run("ibflex_many_queries")
    assert set(states.values()) == {"success"} and len(states) == 5
    assert files_under(tmp_path) == ["ibflex/2026-11-20/100001.xml", "ibflex/2026-11-20/100002.csv"]


def lineage_events(job: str, wait: float = 30.0) -> list[dict[str, Any]]:
    """The OpenLineage COMPLETE events of a job (``<dag_id>.<task_id>``), from the file transport."""
    import time

    from tests.conftest import OPENLINEAGE_EVENTS

    deadline = time.monotonic() + wait
    while True:
        lines = OPENLINEAGE_EVENTS.read_text().splitlines() if OPENLINEAGE_EVENTS.exists() else []
        events = [json.loads(line) for line in lines if line.strip()]
        found = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == job]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_example_dag_emits_lineage_a_lineage_server_can_read(
    flex_simulator: FlexSimulator,
    conn_env: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = flex_simulator.add_token(new_token())
    conn_env(token)
    flex_simulator.add_query("100001", generation_polls=1, content="full", accounts=2, size=50_000)
    monkeypatch.setenv("AIRFLOW_VAR_IBFLEX_DESTINATION_BASE", f"file://{tmp_path}")
    states, run_id = run("ibflex_statement_to_storage", logical_date=LOGICAL_DATE + timedelta(days=40))
    assert set(states.values()) == {"success"}
    dag = "ibflex_statement_to_storage"
    query = {
        "namespace": f"ibflex://{flex_simulator.base_url.split('//')[1].split(':')[0]}",
        "name": "query/100001",
    }

    (send,) = [
        e
        for e in lineage_events(f"{dag}.send_request")
        if e["run"]["facets"]["airflow"]["dagRun"]["run_id"] == run_id
    ] or [None]
    assert send and [{k: d[k] for k in ("namespace", "name")} for d in send["inputs"]] == [query]

    landed = xcom_of(run_id, "land_statement")
    (land,) = [
        e
        for e in lineage_events(f"{dag}.land_statement")
        if e["run"]["facets"]["airflow"]["dagRun"]["run_id"] == run_id
    ] or [None]
    assert land and [{k: d[k] for k in ("namespace", "name")} for d in land["inputs"]] == [query]
    (statement,) = land["outputs"]
    assert (statement["namespace"], statement["name"]) == ("file", landed["uri"].removeprefix("file://"))
    assert statement["facets"]["version"]["datasetVersion"] == landed["sha256"]
    assert statement["outputFacets"]["outputStatistics"]["size"] == landed["size"]

    for task, layout in (
        ("statement_to_tables", "tables/section=Trades/element=Trade"),
        ("statement_to_delta", "delta/Trades/Trade"),
    ):
        manifest = xcom_of(run_id, task)
        (tables,) = [
            e
            for e in lineage_events(f"{dag}.{task}")
            if e["run"]["facets"]["airflow"]["dagRun"]["run_id"] == run_id
        ] or [None]
        assert tables, task
        (read,) = tables["inputs"]
        assert (
            read["name"] == statement["name"]
            and read["facets"]["version"]["datasetVersion"] == landed["sha256"]
        )
        written = {d["name"]: d for d in tables["outputs"]}
        assert len(written) == len(manifest["tables"])
        trades = written[f"{tmp_path}/ibflex/{layout}"]
        assert (
            trades["outputFacets"]["outputStatistics"]["rowCount"]
            == manifest["tables"]["Trades/Trade"]["rows"]
        )
        fields = [f["name"] for f in trades["facets"]["schema"]["fields"]]
        assert fields == [c["name"] for c in manifest["tables"]["Trades/Trade"]["columns"]]
