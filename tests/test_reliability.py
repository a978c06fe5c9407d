"""Fault injection and bad input: nothing is lost, nothing leaks.

Every fault goes through the simulator over real HTTP at each step where it can happen: SendRequest
(the Hook), the trigger's poll, and the final download (the Hook, to real files or moto's S3). One
distinctive token is used throughout; at the end of the module it must appear in no captured log
record, exception, event, trigger kwargs or file. ``REPORT`` counts what was tried and what held; the
summary is printed at the end of the test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ibflex.exceptions import IBFlexFatalError, IBFlexTransientError
from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
from airflow_provider_ibflex.protocol import (
    ERROR_TABLE,
    Action,
    FlexInputError,
    FlexParseError,
    ResponseReader,
    endpoints_for,
    parse_envelope,
)
from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig
from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger
from tests.conftest import FAST_EXTRAS, MotoS3, files_under, first_event, new_token, sha256_of

TOKEN = new_token()
REPORT: dict[str, int] = {
    "faults injected": 0,
    "statements landed intact": 0,
    "fatal errors failed at once": 0,
    "bad inputs refused before any request": 0,
    "partial objects seen": 0,
    "token leaks": 0,
}
SEEN: list[Any] = []  # every exception, event, result and trigger kwargs the suite produced


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


CAPTURE = _Capture()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlexSimulator]:
    """One simulator, one token, and a log capture at DEBUG for the whole module."""
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(CAPTURE)
    root.setLevel(logging.DEBUG)
    for name in ("urllib3", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    conn_vars = []
    with FlexSimulator(SimulatorConfig(rate_limit=None)) as simulator:
        simulator.add_token(TOKEN)
        for version in (2, 3):
            name = f"AIRFLOW_CONN_RELIABLE_V{version}"
            body = {"conn_type": "ibflex", "password": TOKEN, "host": simulator.base_url}
            os.environ[name] = json.dumps(
                {**body, "extra": {**FAST_EXTRAS, "version": version, "read_timeout": 0.5}}
            )
            conn_vars.append(name)
        yield simulator
    root.removeHandler(CAPTURE)
    root.setLevel(old_level)
    for name in conn_vars:
        del os.environ[name]


LANDING_DIRS: list[Path] = []


@pytest.fixture
def land(tmp_path: Path, sim: FlexSimulator) -> Iterator[Path]:
    """A landing folder; afterwards, nothing partial may be in it."""
    sim.state.clear()
    folder = tmp_path / "landing"
    folder.mkdir()
    LANDING_DIRS.append(folder)
    yield folder
    partial = [name for name in files_under(folder) if name.endswith(".part")]
    REPORT["partial objects seen"] += len(partial)
    assert partial == []


def hook(version: int = 3) -> IBFlexHook:
    return IBFlexHook(f"reliable_v{version}")


def landed_intact(result: Any, dest: Path, sim: FlexSimulator, query_id: str = "1") -> None:
    SEEN.append(result)
    assert result.landed and result.metadata["sha256"] == sha256_of(dest) == sim.statement(query_id).sha256()
    REPORT["statements landed intact"] += 1


def run_trigger(reference: str, version: int = 3, deadline: float = 30, **kwargs: Any) -> dict[str, Any]:
    trigger = IBFlexStatementTrigger(
        reference, time.time() + deadline, f"reliable_v{version}", poke_interval=0.02, **kwargs
    )
    SEEN.append(trigger.serialize())

    event = asyncio.run(first_event(trigger))
    SEEN.append(event)
    return event


# --------------------------------------------------------------------------------------------------
# Every error code, as v2 and v3 envelopes, Warn and Fail, at every step
# --------------------------------------------------------------------------------------------------

VARIANTS = [(3, "Fail"), (3, "Warn"), (2, "Fail")]  # v2 envelopes have no Status


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
@pytest.mark.parametrize(("version", "status"), VARIANTS)
@pytest.mark.parametrize("step", ["send", "poll", "download"])
def test_every_error_code_at_every_step(
    sim: FlexSimulator, land: Path, code: int, version: int, status: str, step: str
) -> None:
    info = ERROR_TABLE[code]
    sim.add_query("1", size=30_000)
    sim.add_fault("error", step="send" if step == "send" else "get", code=code, status=status)
    REPORT["faults injected"] += 1
    fatal = info.action is Action.FATAL
    if step == "send":
        if fatal:
            with pytest.raises(IBFlexFatalError) as caught:
                hook(version).send_request("1")
            SEEN.append(caught.value)
            assert caught.value.code == code and info.hint in str(caught.value)
        else:
            SEEN.append(hook(version).send_request("1"))
        assert len(sim.requests("send")) == (1 if fatal else 2)
    elif step == "poll":
        event = run_trigger(sim.state.issue_reference(TOKEN, "1"), version)
        assert event["status"] == ("error" if fatal else "ready")
        if fatal:
            assert event["code"] == code and info.hint in event["message"]
        assert len(sim.requests("get")) == (1 if fatal else 2)
    else:
        reference = sim.state.issue_reference(TOKEN, "1")
        dest = land / "s.xml"
        if fatal:
            with pytest.raises(IBFlexFatalError) as caught:
                hook(version).download_statement(reference, str(dest))
            SEEN.append(caught.value)
            assert caught.value.code == code and files_under(land) == []
        else:
            result = hook(version).download_statement(reference, str(dest))
            if info.action is Action.POLL:
                assert result.state == "pending" and files_under(land) == []
                result = hook(version).download_statement(reference, str(dest))
            landed_intact(result, dest, sim)
    if step != "send":
        assert sim.requests("send") == [], "a GetStatement problem never triggers a new SendRequest"
    if fatal:
        REPORT["fatal errors failed at once"] += 1


# --------------------------------------------------------------------------------------------------
# Broken transport and bodies
# --------------------------------------------------------------------------------------------------

BODY_FAULTS = ["http500", "html404", "empty", "garbage", "hang", "oversized", "xxe", "billion_laughs"]


@pytest.mark.parametrize("kind", BODY_FAULTS)
@pytest.mark.parametrize("step", ["send", "poll", "download"])
def test_broken_answers_are_waited_out(sim: FlexSimulator, land: Path, kind: str, step: str) -> None:
    sim.add_query("1", size=30_000)
    sim.add_fault(kind, step="send" if step == "send" else "get", seconds=5)
    REPORT["faults injected"] += 1
    if step == "send":
        SEEN.append(hook().send_request("1"))
        assert len(sim.requests("send")) == 2
    elif step == "poll":
        assert run_trigger(sim.state.issue_reference(TOKEN, "1"))["status"] == "ready"
    else:
        dest = land / "s.xml"
        landed_intact(hook().download_statement(sim.state.issue_reference(TOKEN, "1"), str(dest)), dest, sim)


@pytest.mark.parametrize("kind", ["reset", "short", "truncated", "trickle"])
@pytest.mark.parametrize("version", [2, 3])
def test_broken_statement_bodies_land_whole_on_retry(
    sim: FlexSimulator, land: Path, kind: str, version: int
) -> None:
    sim.add_query("1", size=2_000_000 if kind != "trickle" else 4_000)
    sim.add_fault(kind, after_bytes=700_000, seconds=0.001)
    REPORT["faults injected"] += 1
    dest = land / "deep" / "s.xml"
    landed_intact(
        hook(version).download_statement(sim.state.issue_reference(TOKEN, "1"), str(dest)), dest, sim
    )


def test_a_persistently_broken_statement_fails_transiently_and_leaves_nothing(
    sim: FlexSimulator, land: Path
) -> None:
    sim.add_query("1", size=500_000)
    sim.add_fault("reset", after_bytes=100_000, times=None)
    REPORT["faults injected"] += 3
    with pytest.raises(IBFlexTransientError) as caught:
        hook().download_statement(sim.state.issue_reference(TOKEN, "1"), str(land / "s.xml"))
    SEEN.append(caught.value)
    assert not isinstance(caught.value, AirflowFailException)
    assert files_under(land) == []


def test_throttling_storm_then_recovery(sim: FlexSimulator, land: Path) -> None:
    sim.add_query("1")
    sim.add_fault("error", step="send", code=1018, times=2)
    sim.add_fault("error", step="get", code=1018, times=8)
    REPORT["faults injected"] += 10
    reference = hook().send_request("1")
    assert run_trigger(reference.reference_code)["status"] == "ready"
    dest = land / "s.xml"
    landed_intact(hook().download_statement(reference.reference_code, str(dest)), dest, sim)
    answers = [r.answer for r in sim.requests()]
    assert answers.count("1018") == 10 and len(sim.requests("send")) == 3


def test_foreign_url_host_never_receives_the_token(sim: FlexSimulator, land: Path) -> None:
    with FlexSimulator(SimulatorConfig(rate_limit=None), host="127.0.0.2") as elsewhere:
        foreign = elsewhere.base_url + "/GetStatement"
        sim.add_query("1")
        sim.add_fault("foreign_url", step="send", url=foreign)
        REPORT["faults injected"] += 1
        reference = hook().send_request("1")
        assert run_trigger(reference.reference_code, url=foreign)["status"] == "ready"
        dest = land / "s.xml"
        landed_intact(hook().download_statement(reference.reference_code, str(dest), url=foreign), dest, sim)
        assert elsewhere.requests() == []


@pytest.mark.parametrize("step", ["send", "poll", "download"])
def test_redirects_are_refused_and_never_followed(sim: FlexSimulator, land: Path, step: str) -> None:
    """A redirect that echoes the query string would carry the token elsewhere: it is never followed."""
    with FlexSimulator(SimulatorConfig(rate_limit=None), host="127.0.0.2") as elsewhere:
        sim.add_query("1")
        target = elsewhere.base_url + "/GetStatement"
        sim.add_fault("redirect", step="send" if step == "send" else "get", url=target)
        REPORT["faults injected"] += 1
        if step == "poll":
            event = run_trigger(sim.state.issue_reference(TOKEN, "1"))
            assert event["status"] == "error" and "redirected" in event["message"]
        else:
            with pytest.raises(IBFlexFatalError, match="redirected") as caught:
                if step == "send":
                    hook().send_request("1")
                else:
                    hook().download_statement(sim.state.issue_reference(TOKEN, "1"), str(land / "s.xml"))
            SEEN.append(caught.value)
        assert elsewhere.requests() == [] and files_under(land) == []
        assert len(sim.requests()) == 1, "a redirect is fatal: not retried"
    REPORT["fatal errors failed at once"] += 1


def test_triggerer_restart_mid_poll_finishes_with_the_original_deadline(sim: FlexSimulator) -> None:
    sim.add_query("1", generation_seconds=1.2)
    reference = sim.state.issue_reference(TOKEN, "1")
    deadline = time.time() + 20
    first = IBFlexStatementTrigger(reference, deadline, "reliable_v3", poke_interval=0.1)
    _, kwargs = first.serialize()
    REPORT["faults injected"] += 1

    async def restart() -> dict[str, Any]:
        task = asyncio.ensure_future(first_event(first))
        await asyncio.sleep(0.5)
        task.cancel()
        assert sim.requests("get"), "the first trigger had started polling"
        again = IBFlexStatementTrigger(**json.loads(json.dumps(kwargs)))
        return await first_event(again)

    event = asyncio.run(restart())
    SEEN.append(event)
    assert event["status"] == "ready" and event["deadline"] == deadline


def test_worker_killed_mid_download_leaves_nothing_visible(sim: FlexSimulator, land: Path) -> None:
    sim.add_query("1", size=400_000_000)
    sim.state.config.record_digests = False
    reference = sim.state.issue_reference(TOKEN, "1")
    dest = land / "s.xml"
    script = (
        "from airflow_provider_ibflex.hooks.ibflex import IBFlexHook\n"
        f"IBFlexHook('reliable_v3').download_statement('{reference}', {str(dest)!r})\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    REPORT["faults injected"] += 1
    try:
        deadline = time.monotonic() + 60
        while not any(n.endswith(".part") and (land / n).stat().st_size > 0 for n in files_under(land)):
            assert time.monotonic() < deadline and worker.poll() is None, "the worker never started writing"
            time.sleep(0.005)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert not dest.exists(), "a killed download must not be visible at the destination"
    # The killed worker could not clean up its hidden temporary file; it never shows as the statement.
    for orphan in files_under(land):
        (land / orphan).unlink()
    sim.state.config.record_digests = True
    landed_intact(hook().download_statement(reference, str(dest)), dest, sim)


def test_unwritable_destination_is_a_clear_error(sim: FlexSimulator, land: Path) -> None:
    (land / "blocker").write_text("a file where a folder should be")
    sim.add_query("1")
    REPORT["faults injected"] += 1
    with pytest.raises(OSError) as caught:
        hook().download_statement(sim.state.issue_reference(TOKEN, "1"), str(land / "blocker" / "s.xml"))
    SEEN.append(caught.value)
    assert files_under(land) == ["blocker"]


def test_s3_going_away_mid_upload(
    sim: FlexSimulator, land: Path, monkeypatch: pytest.MonkeyPatch, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.bucket("reliable")
    monkeypatch.setenv(
        "AIRFLOW_CONN_RELIABLE_S3", moto_s3.connection(config_kwargs={"retries": {"max_attempts": 1}})
    )
    sim.add_query("1", size=120_000_000)
    reference = sim.state.issue_reference(TOKEN, "1")
    destination = f"s3://{bucket}/ibflex/s.xml"
    REPORT["faults injected"] += 1
    outcome: dict[str, Any] = {}

    def download() -> None:
        try:
            outcome["result"] = hook().download_statement(
                reference, destination, destination_conn_id="reliable_s3"
            )
        except Exception as exc:  # the error is the point of the test
            outcome["error"] = exc

    worker = threading.Thread(target=download)
    worker.start()
    while not sim.requests("get"):
        time.sleep(0.005)
    time.sleep(0.2)
    moto_s3.stop()
    worker.join(timeout=300)
    SEEN.append(outcome)
    assert "error" in outcome, "the upload should have failed with the store gone"
    back = MotoS3(port=moto_s3.port)
    try:
        assert back.keys(bucket) == [], "no partial object"
        result = hook().download_statement(reference, destination, destination_conn_id="reliable_s3")
        SEEN.append(result)
        body = back.client.get_object(Bucket=bucket, Key="ibflex/s.xml")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sim.statement("1").sha256() == result.metadata["sha256"]
        assert back.keys(bucket) == ["ibflex/s.xml"]
        REPORT["statements landed intact"] += 1
    finally:
        back.stop()


def test_truncated_statement_to_s3_leaves_no_object_and_no_upload(
    sim: FlexSimulator, land: Path, monkeypatch: pytest.MonkeyPatch, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.bucket("truncated")
    monkeypatch.setenv("AIRFLOW_CONN_TRUNCATED_S3", moto_s3.connection())
    # Larger than one upload part, so the write has started a multipart upload when it is refused.
    sim.add_query("1", size=20_000_000)
    sim.add_fault("truncated", times=None)
    REPORT["faults injected"] += 3
    with pytest.raises(IBFlexTransientError, match="truncated") as caught:
        hook().download_statement(
            sim.state.issue_reference(TOKEN, "1"), f"s3://{bucket}/s.xml", destination_conn_id="truncated_s3"
        )
    SEEN.append(caught.value)
    import gc

    gc.collect()  # a leaked file object's __del__ must not commit anything either
    assert moto_s3.keys(bucket) == []
    assert moto_s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --------------------------------------------------------------------------------------------------
# XML attacks
# --------------------------------------------------------------------------------------------------


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
    with pytest.raises(FlexParseError, match="declares a DTD"):
        parse_envelope(body.encode())
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


# --------------------------------------------------------------------------------------------------
# Bad user input: a clear error naming the field, before any request
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Last: the token went nowhere
# --------------------------------------------------------------------------------------------------


def test_the_token_leaked_nowhere(sim: FlexSimulator) -> None:
    """Every log record (urllib3, httpx and httpcore at DEBUG included), exception, result, event,
    trigger kwargs and landed file of this module is free of the token."""
    assert CAPTURE.messages, "the capture must have seen the suite's logs"
    assert len(SEEN) > 100, "the module's results, events and errors were collected"
    leaks = [m for m in CAPTURE.messages if TOKEN in m]
    leaks += [repr(x) for x in SEEN if TOKEN in repr(x) or TOKEN in str(x)]
    for folder in LANDING_DIRS:
        leaks += [str(p) for p in Path(folder).rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    REPORT["token leaks"] = len(leaks)
    assert leaks == []
