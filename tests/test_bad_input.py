"""Bad user input: a clear error naming the field, before any request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
from airflow_provider_ibflex.protocol import (
    FlexInputError,
)
from airflow_provider_ibflex.simulator import FlexSimulator
from tests.conftest import files_under
from tests.faults import REPORT, SEEN, TOKEN, hook


def _operator(**kwargs: Any) -> Any:
    from airflow_provider_ibflex.operators.ibflex import IBFlexSendRequestOperator

    return IBFlexSendRequestOperator(
        task_id="send", ibflex_conn_id="reliable_v3", **{"query_id": "1", **kwargs}
    )


def _sensor(**kwargs: Any) -> Any:
    from airflow_provider_ibflex.sensors.ibflex import IBFlexStatementSensor

    base = {"reference_code": "123", "destination": "file:///tmp/x.xml", "deferrable": True}
    return IBFlexStatementSensor(task_id="land", ibflex_conn_id="reliable_v3", **{**base, **kwargs})


BAD_INPUTS: list[tuple[str, Callable[[], Any], str]] = [
    ("empty query id", lambda: _operator(query_id=""), "query_id"),
    ("non-numeric query id", lambda: _operator(query_id="trades"), "query_id"),
    ("fd after td", lambda: _operator(from_date="20261102", to_date="20261101"), "from_date"),
    ("span over 365 days", lambda: _operator(from_date="20250101", to_date="20260105"), "365"),
    ("empty reference code", lambda: _sensor(reference_code=""), "reference_code"),
    ("non-numeric reference code", lambda: _sensor(reference_code="abc"), "reference_code"),
    ("unknown destination scheme", lambda: _sensor(destination="nosuch://bucket/x.xml"), "scheme"),
    ("destination is a folder", lambda: _sensor(destination="file:///tmp/statements/"), "folder"),
]


@pytest.mark.parametrize(("name", "make", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_before_any_request(
    sim: FlexSimulator, name: str, make: Callable[[], Any], field: str
) -> None:
    sim.state.clear()
    task = make()
    with pytest.raises(AirflowFailException, match=field) as caught:
        task.execute(context={})
    SEEN.append(caught.value)
    assert sim.requests() == []
    REPORT["bad inputs refused before any request"] += 1


def test_unknown_version_and_missing_connection(sim: FlexSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    sim.state.clear()
    monkeypatch.setenv(
        "AIRFLOW_CONN_RELIABLE_V9",
        json.dumps({"conn_type": "ibflex", "password": TOKEN, "host": sim.base_url, "extra": {"version": 9}}),
    )
    with pytest.raises(FlexInputError, match=r"'reliable_v9'.*version") as bad_version:
        IBFlexHook("reliable_v9")
    with pytest.raises(AirflowNotFoundException, match="reliable_missing") as missing:
        IBFlexHook("reliable_missing")
    SEEN.extend([bad_version.value, missing.value])
    assert sim.requests() == []
    REPORT["bad inputs refused before any request"] += 2


def test_airflows_masker_knows_the_token(sim: FlexSimulator) -> None:
    from airflow.sdk.log import redact

    hook()
    assert redact(TOKEN) == "***"
    assert redact(f"https://x/GetStatement?t={TOKEN}&q=1") == "https://x/GetStatement?t=***&q=1"


def test_expired_reference_says_to_rerun_sendrequest(sim: FlexSimulator, land: Path) -> None:
    sensor = _sensor(destination=f"file://{land}/s.xml")
    event = {"status": "error", "code": 1017, "message": "x", "reference_code": "123", "deadline": 0}
    with pytest.raises(AirflowFailException, match="Re-run the upstream SendRequest task"):
        sensor.execute_complete(context={}, event=event)
    sim.add_query("1")
    sensor = _sensor(reference_code="999", destination=f"file://{land}/s.xml")  # unknown to the service
    with pytest.raises(AirflowFailException, match="Re-run the upstream SendRequest task") as caught:
        sensor.execute(context={})
    SEEN.append(caught.value)
    assert [r.answer for r in sim.requests()] == ["1017"] and files_under(land) == []
