"""What must hold on every supported Airflow and Python: the provider registers with its connection type
and form, the Hook talks to the simulator, the trigger survives its serialization and fires, and the
example DAG lands a statement and turns it into tables (Parquet and Delta) with the sensor deferred
(its trigger run inline by dag.test) and in poke mode."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ibflex.simulator import FlexSimulator

LOGICAL_DATE = datetime(2026, 11, 20, tzinfo=timezone.utc)


def airflow_version() -> tuple[int, int]:
    from airflow.providers.common.compat.version_compat import get_base_airflow_version_tuple

    major, minor, _ = get_base_airflow_version_tuple()
    return major, minor


def test_the_installed_provider_is_the_wheel_not_a_checkout() -> None:
    import airflow_provider_ibflex

    assert "site-packages" in airflow_provider_ibflex.__file__, airflow_provider_ibflex.__file__


def connection_form() -> tuple[set[str], dict[str, Any]]:
    """The ``ibflex`` form as this Airflow's UI gets it: its extra fields, and the standard fields'
    behaviour (hidden, relabelled)."""
    if airflow_version() >= (3, 0):
        # The React UI's source: the provider info's conn-fields from 3.2, the hook's Flask widgets
        # (built with FAB mocked, which 3.0 and 3.1 do not install) before.
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

        (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "ibflex"]
        standard = meta.standard_fields.model_dump() if meta.standard_fields else {}
        return set(meta.extra_fields or {}), standard
    # Airflow 2's Flask UI: the hook's widgets and behaviour, through the ProvidersManager.
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    fields = {key.rsplit("__", 1)[-1] for key in manager.connection_form_widgets if "__ibflex__" in key}
    behaviour = manager.field_behaviours["ibflex"]
    standard = {
        name: {"hidden": name in behaviour["hidden_fields"], "title": behaviour["relabeling"].get(name)}
        for name in ("host", "login", "password", "port", "schema")
    }
    standard["url_schema"] = standard.pop("schema")
    return fields, standard


def test_the_provider_is_registered_with_its_connection_type_and_form() -> None:
    from airflow.providers_manager import ProvidersManager

    assert "airflow-provider-ibflex" in ProvidersManager().providers
    fields, standard = connection_form()
    assert {"version", "user_agent", "connect_timeout", "read_timeout"} <= fields, fields
    assert standard["password"]["title"] == "Flex Web Service token", standard
    assert standard["login"]["hidden"] and standard["port"]["hidden"] and standard["url_schema"]["hidden"]


def test_the_hook_lands_a_statement(
    simulator: FlexSimulator, token: str, connection: Any, tmp_path: Path
) -> None:
    from airflow_provider_ibflex.hooks.ibflex import IBFlexHook

    simulator.add_query("555", size=30_000)
    hook = IBFlexHook(connection(token))
    reference = hook.send_request("555")
    result = hook.download_statement(reference.reference_code, f"file://{tmp_path}/s.xml", url=reference.url)
    assert (
        result.landed and result.metadata and result.metadata["size"] == (tmp_path / "s.xml").stat().st_size
    )


def test_the_trigger_round_trips_through_its_serialized_kwargs_and_fires(
    simulator: FlexSimulator, token: str, connection: Any
) -> None:
    from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger

    simulator.add_query("556", generation_polls=2)
    code = simulator.state.issue_reference(token, "556")
    trigger = IBFlexStatementTrigger(code, time.time() + 60, connection(token), poke_interval=0.1)
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (path, kwargs) and token not in json.dumps(kwargs)

    async def first() -> dict[str, Any]:
        async for event in rebuilt.run():
            return dict(event.payload)
        raise AssertionError("no event")

    event = asyncio.run(first())
    assert event["status"] == "ready" and event["reference_code"] == code


class FakeSupervisor:
    """The triggerer's supervisor end of its comms socket, speaking Airflow's own frames: it answers
    GetConnection with a stored connection, as the real supervisor answers from the API server."""

    def __init__(self, sock: socket.socket, connections: dict[str, dict[str, Any]]) -> None:
        self.sock = sock
        self.connections = connections
        self.asked: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def serve(self) -> None:
        import msgspec
        from airflow.sdk.execution_time.comms import ConnectionResult, _RequestFrame, _ResponseFrame

        decoder = msgspec.msgpack.Decoder(_RequestFrame)
        try:
            while True:
                length = int.from_bytes(self.read_exactly(4), "big")
                frame = decoder.decode(self.read_exactly(length))
                body = frame.body or {}
                self.asked.append(body.get("type", ""))
                if body.get("type") == "GetConnection":
                    stored = self.connections[body["conn_id"]]
                    result = ConnectionResult(**stored, type="ConnectionResult")
                    answer = result.model_dump(exclude_unset=True, by_alias=True)
                    reply = _ResponseFrame(id=frame.id, body=answer)
                else:  # MaskSecret, say: done, nothing to answer
                    reply = _ResponseFrame(id=frame.id)
                self.sock.sendall(reply.as_bytes())
        except (EOFError, OSError):
            pass  # the triggerer side closed
        except BaseException as exc:  # fail the test, not only this thread
            self.error = exc
            self.sock.close()


def test_the_trigger_loads_a_stored_connection_as_in_a_triggerer(
    simulator: FlexSimulator, token: str
) -> None:
    """Not from the environment: from where a triggerer of this Airflow takes it (its supervisor,
    through the comms socket, on Airflow 3; the metadata database on Airflow 2), with the loop running
    other work meanwhile."""
    from airflow_provider_ibflex.triggers.ibflex import load_connection

    stored = {
        "conn_id": "ibflex_stored",
        "conn_type": "ibflex",
        "host": simulator.base_url,
        "password": token,
        "extra": json.dumps({"read_timeout": 7}),
        "schema": None,
        "login": None,
        "port": None,
    }

    async def load() -> Any:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            settings, _ = await asyncio.wait_for(load_connection("ibflex_stored"), timeout=30)
        finally:
            ticker.cancel()
        assert ticks > 0, "the loop was held while the connection loaded"
        return settings

    if airflow_version() < (3, 0):
        from airflow.models.connection import Connection
        from airflow.utils.session import create_session

        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "ibflex_stored").delete()
            session.add(Connection(**stored))
        settings = asyncio.run(load())
    else:
        from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder
        from airflow.sdk.execution_time import task_runner

        ours, theirs = socket.socketpair()
        supervisor = FakeSupervisor(theirs, {"ibflex_stored": stored})

        async def in_a_triggerer() -> Any:
            # As TriggerRunner.init_comms sets the comms up (3.2 and later also start a reader task).
            reader, writer = await asyncio.open_connection(sock=ours)
            import attrs

            # The sync decoder's socket is stdin in a triggerer, which is the comms socket there.
            sync_socket = {"socket": ours} if "socket" in attrs.fields_dict(TriggerCommsDecoder) else {}
            decoder = TriggerCommsDecoder(async_writer=writer, async_reader=reader, **sync_socket)
            if hasattr(decoder, "start_reader"):
                await decoder.start_reader()
            previous = getattr(task_runner, "SUPERVISOR_COMMS", None)
            task_runner.SUPERVISOR_COMMS = decoder
            try:
                return await load()
            finally:
                task_runner.SUPERVISOR_COMMS = previous
                writer.close()

        settings = asyncio.run(in_a_triggerer())
        theirs.close()
        assert supervisor.error is None and "GetConnection" in supervisor.asked, supervisor.error
    assert settings.token == token and settings.read_timeout == 7


def activate_assets() -> None:
    """Activate the DAGs' assets as a scheduler would: Airflow 3.0's dag.test runs tasks before any
    scheduler has, and fails those with outlets (apache/airflow#51644; fixed in 3.1)."""
    import subprocess
    import sys

    from airflow.models.asset import AssetActive, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "dags", "reserialize"], check=True, capture_output=True, timeout=300)
    with create_session() as session:
        active = set(session.execute(select(AssetActive.name, AssetActive.uri)).all())
        for asset in session.scalars(select(AssetModel)):
            if (asset.name, asset.uri) not in active:
                session.add(AssetActive.for_asset(asset))


def run_dag(dag_id: str, **conf: Any) -> Any:
    """dag.test() a DAG of the DAGs folder, the way this Airflow calls it."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # before Airflow 3.2
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(dag_id)
    assert dag is not None, dag_id
    if airflow_version() == (3, 0):
        activate_assets()
    when = {"logical_date": LOGICAL_DATE} if airflow_version() >= (3, 0) else {"execution_date": LOGICAL_DATE}
    return dag.test(run_conf=conf or None, **when)


def test_the_example_dag_defers_lands_and_makes_tables(
    simulator: FlexSimulator, token: str, connection: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake import DeltaTable

    connection(token)
    simulator.add_query("100001", generation_polls=1, content="full", accounts=2, size=60_000)
    monkeypatch.setenv("AIRFLOW_VAR_IBFLEX_DESTINATION_BASE", f"file://{tmp_path}")
    dag_run = run_dag("ibflex_statement_to_storage")
    assert str(dag_run.state) in ("success", "DagRunState.SUCCESS"), dag_run.state
    # The DAG files statements by the run's data interval: a manual run's starts at its logical date on
    # Airflow 3 and a day before on Airflow 2 (whose cron schedules make intervals that end there).
    day = dag_run.data_interval_start.strftime("%Y-%m-%d")
    landed = tmp_path / "ibflex" / day / "100001.xml"
    assert landed.read_bytes().rstrip().endswith(b"</FlexQueryResponse>")
    manifest = json.loads((tmp_path / f"ibflex/tables/_manifests/{day}-100001.json").read_text())
    assert manifest["statements"]["found"] == 2 and manifest["rows"] > 0
    trades = DeltaTable(str(tmp_path / "ibflex" / "delta" / "Trades" / "Trade"))
    assert trades.to_pyarrow_dataset().count_rows() == manifest["tables"]["Trades/Trade"]["rows"]


def test_the_sensor_in_poke_mode(
    simulator: FlexSimulator, token: str, connection: Any, tmp_path: Path
) -> None:
    connection(token)
    simulator.add_query("42", generation_polls=2)
    dag_run = run_dag("ibflex_compat_poke", query_id="42", destination=f"file://{tmp_path}/poked.xml")
    assert str(dag_run.state) in ("success", "DagRunState.SUCCESS"), dag_run.state
    assert (tmp_path / "poked.xml").read_bytes().rstrip().endswith(b"</FlexQueryResponse>")
