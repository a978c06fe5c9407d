"""Hostile bodies: external entities, entity expansion and arbitrary bytes."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from airflow_provider_ibflex.protocol import (
    ResponseReader,
    endpoints_for,
)
from airflow_provider_ibflex.simulator import FlexSimulator
from tests.conftest import new_token
from tests.faults import CAPTURE, REPORT, hook, landed_intact, run_trigger, waited_out


def test_external_entities_never_read_local_files(sim: FlexSimulator, land: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    marker = "LOCAL-FILE-CONTENT-" + new_token()
    secret_file.write_text(marker)
    sim.add_query("1")
    for step in ("send", "get", "get"):
        sim.add_fault("xxe", step=step, url=f"file://{secret_file}")
        REPORT["faults injected"] += 1
    reference = hook().send_request("1")
    event = run_trigger(reference.reference_code)
    dest = land / "s.xml"
    result = hook().download_statement(reference.reference_code, str(dest))
    landed_intact(result, dest, sim)
    assert marker not in json.dumps(event) + repr(reference) + repr(result)
    assert marker.encode() not in dest.read_bytes()


@pytest.mark.parametrize("kind", ["xxe", "billion_laughs"])
@pytest.mark.parametrize("step", ["send", "poll", "download"])
def test_envelopes_with_a_dtd_are_refused_as_such_and_waited_out(
    sim: FlexSimulator, land: Path, kind: str, step: str
) -> None:
    sim.add_query("1", size=30_000)
    sim.add_fault(kind, step="send" if step == "send" else "get")
    REPORT["faults injected"] += 1
    logged = len(CAPTURE.messages)
    waited_out(sim, land, step)
    if step != "poll":  # the Hook logs why it tried again (the trigger logs through Airflow's structlog)
        assert any("declares a DTD" in message for message in CAPTURE.messages[logged:]), "refused as a DTD"


def test_billion_laughs_refused_quickly_in_bounded_memory() -> None:
    from airflow_provider_ibflex.simulator.app import FlexSimulatorApp  # noqa: F401 - the attack's source

    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(10))
    envelope = "<FlexStatementResponse><code>&l9;</code></FlexStatementResponse>"
    body = f'<?xml version="1.0"?><!DOCTYPE r [{entities}]>{envelope}'
    tracemalloc.start()
    started = time.perf_counter()
    reader = ResponseReader(200, "get", endpoints_for(None))
    reader.feed(body.encode())
    outcome = reader.end()
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The envelope parser sees the DTD and refuses it unparsed: nothing is expanded.
    assert outcome.kind == "retry" and "declares a DTD" in outcome.message
    assert time.perf_counter() - started < 0.5 and elapsed < 0.5 and peak < 5_000_000


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=500), st.sampled_from([200, 404, 500]))
@settings(max_examples=300, deadline=None)
def test_reader_never_raises_on_arbitrary_bytes(body: bytes, step: int, status: int) -> None:
    for call in ("send", "get"):
        reader = ResponseReader(status, call, endpoints_for(None))  # type: ignore[arg-type]
        for start in range(0, len(body), step):
            if reader.feed(body[start : start + step]):
                break
        outcome = reader.verdict()
        if outcome.kind == "reference":
            assert call == "send" and outcome.reference_code and outcome.reference_code.isdigit()
        if status >= 500:
            assert outcome.kind == "retry"
        if outcome.kind == "statement":
            assert status == 200, "a statement never comes with an error status"


_ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def _element(name: str, text: str | None) -> str:
    from xml.sax.saxutils import escape

    return "" if text is None else f"<{name}>{escape(text)}</{name}>"


@given(
    st.sampled_from([2, 3]),
    st.dictionaries(
        st.sampled_from(["Status", "ErrorCode", "ErrorMessage", "ReferenceCode", "Url", "code", "url"]),
        _ANY_TEXT,
    ),
    st.sampled_from(["send", "get"]),
)
@example(3, {"Status": "Fail", "ErrorCode": "²"}, "get")
@example(3, {"Status": "Success", "ReferenceCode": "١٢٣"}, "send")
@example(2, {"code": "٣"}, "send")
@settings(max_examples=300, deadline=None)
def test_reader_never_raises_on_envelopes_with_any_text_in_any_field(
    version: int, fields: dict[str, str], call: str
) -> None:
    names = (
        ["Status", "ErrorCode", "ErrorMessage", "ReferenceCode", "Url"] if version == 3 else ["code", "url"]
    )
    body = "<FlexStatementResponse>" + "".join(_element(n, fields.get(n)) for n in names)
    body += "</FlexStatementResponse>"
    reader = ResponseReader(200, call, endpoints_for(None))  # type: ignore[arg-type]
    reader.feed(body.encode())
    outcome = reader.end()
    if outcome.code is not None:
        assert isinstance(outcome.code, int)
    if outcome.reference_code is not None:
        assert outcome.reference_code.isascii() and outcome.reference_code.isdigit()
