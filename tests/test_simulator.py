"""The simulator itself, over real HTTP: what it answers, its limits, its CLI and its scale."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from airflow_provider_ibflex.protocol import parse_envelope
from airflow_provider_ibflex.simulator import DEMO_TOKEN, FlexSimulator, SimulatorConfig
from tests.conftest import new_token


def get(sim: FlexSimulator, call: str, **params: str) -> requests.Response:
    return requests.get(f"{sim.base_url}/{call}", params=params, timeout=5)


def test_content_type_and_versions(flex_simulator: FlexSimulator, token: str) -> None:
    flex_simulator.add_query("1")
    v3 = get(flex_simulator, "SendRequest", t=token, q="1", v="3")
    assert v3.headers["content-type"] == "text/plain;charset=UTF-8"
    assert parse_envelope(v3.content).version == 3
    v2 = get(flex_simulator, "SendRequest", t=token, q="1")
    envelope = parse_envelope(v2.content)
    assert envelope.version == 2 and envelope.reference_code
    assert b"</code>" in v2.content and b" </code>" in v2.content


def test_generation_by_seconds_with_time_scale(flex_simulator: FlexSimulator, token: str) -> None:
    flex_simulator.add_query("1", generation_seconds=60)
    flex_simulator.config.time_scale = 200
    code = flex_simulator.state.issue_reference(token, "1")
    assert (
        parse_envelope(get(flex_simulator, "GetStatement", t=token, q=code, v="3").content).error_code == 1019
    )
    time.sleep(0.35)
    assert get(flex_simulator, "GetStatement", t=token, q=code, v="3").content.startswith(
        b"<FlexQueryResponse"
    )


def test_1019_comes_as_warn(flex_simulator: FlexSimulator, token: str) -> None:
    flex_simulator.add_query("1", generation_polls=1)
    code = flex_simulator.state.issue_reference(token, "1")
    envelope = parse_envelope(get(flex_simulator, "GetStatement", t=token, q=code, v="3").content)
    assert (envelope.status, envelope.error_code) == ("Warn", 1019)


def test_rate_limit_per_token(flex_simulator: FlexSimulator) -> None:
    flex_simulator.config.rate_limit = (1.0, 10)
    one, other = flex_simulator.add_token(new_token()), flex_simulator.add_token(new_token())
    answers = [
        parse_envelope(get(flex_simulator, "GetStatement", t=one, q="1", v="3").content).error_code
        for _ in range(2)
    ]
    assert answers == [1017, 1018]
    assert (
        parse_envelope(get(flex_simulator, "GetStatement", t=other, q="1", v="3").content).error_code == 1017
    )


def test_legacy_paths_served_or_retired(flex_simulator: FlexSimulator, token: str) -> None:
    flex_simulator.add_query("1")
    legacy = flex_simulator.legacy_send_url
    ok = parse_envelope(requests.get(legacy, params={"t": token, "q": "1", "v": "3"}, timeout=5).content)
    assert ok.reference_code and ok.url and ok.url.endswith("FlexStatementService.GetStatement")
    flex_simulator.config.legacy = "retired"
    gone = parse_envelope(requests.get(legacy, params={"t": token, "q": "1", "v": "3"}, timeout=5).content)
    assert gone.error_code == 1001


def test_wrong_path_is_an_html_404(flex_simulator: FlexSimulator) -> None:
    response = requests.get(flex_simulator.base_url + "/Nope", timeout=5)
    assert response.status_code == 404 and response.content.startswith(b"<html>")


def test_request_log_endpoint_hides_tokens(flex_simulator: FlexSimulator, token: str) -> None:
    get(flex_simulator, "GetStatement", t=token, q="1", v="3")
    rows = requests.get(f"http://127.0.0.1:{flex_simulator.port}/_simulator/requests", timeout=5).json()
    assert rows[0]["answer"] == "1017" and token not in json.dumps(rows)


def test_statement_size_is_exact_and_memory_free() -> None:
    from airflow_provider_ibflex.simulator import GeneratedStatement, StatementShape

    statement = GeneratedStatement(StatementShape(size=5_000_000))
    assert sum(len(chunk) for chunk in statement.chunks()) == statement.size
    assert max(len(chunk) for chunk in statement.chunks()) < 1_000_000
    assert 4_999_000 < statement.size <= 5_000_000


def test_serves_a_thousand_concurrent_pollers(flex_simulator: FlexSimulator) -> None:
    tokens = [flex_simulator.add_token(new_token()) for _ in range(1000)]
    flex_simulator.add_query("1", generation_polls=5)
    codes = [flex_simulator.state.issue_reference(t, "1") for t in tokens]
    path = urlsplit(flex_simulator.base_url).path + "/GetStatement"

    async def poll(token: str, code: str) -> bytes:
        # Plain asyncio streams: one open connection per poller, all at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", flex_simulator.port)
        request = f"GET {path}?t={token}&q={code}&v=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        reply = await reader.read()
        writer.close()
        return reply

    async def poll_all() -> list[bytes]:
        return await asyncio.gather(*(poll(t, c) for t, c in zip(tokens, codes, strict=True)))

    replies = asyncio.run(poll_all())
    assert sum(b"<ErrorCode>1019</ErrorCode>" in reply for reply in replies) == 1000
    assert len(flex_simulator.requests("get")) == 1000


def test_cli_prints_base_url_token_and_queries(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_ibflex.simulator", "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        assert info["token"] == DEMO_TOKEN and "100001" in info["query_ids"]
        reply = requests.get(
            info["base_url"] + "/SendRequest", params={"t": DEMO_TOKEN, "q": "100001", "v": "3"}, timeout=5
        )
        assert parse_envelope(reply.content).reference_code
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert info["base_url"] in out and DEMO_TOKEN in out and "AIRFLOW_CONN_IBFLEX_DEFAULT" in out


def test_config_file(tmp_path: Path) -> None:
    config = {"tokens": {"abc": {}}, "queries": {"5": {"format": "csv", "size": 1000}}, "rate_limit": None}
    built = SimulatorConfig.from_json(config)
    assert built.rate_limit is None and built.queries["5"].format == "csv" and "abc" in built.tokens
    assert os.environ.get("AIRFLOW_HOME")
