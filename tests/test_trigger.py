"""IBFlexStatementTrigger in a real event loop against the simulator."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from airflow_provider_ibflex.simulator import FlexSimulator
from airflow_provider_ibflex.simulator.process import request_log, simulator_process
from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger, jittered, next_interval
from tests.conftest import first_event, new_token

MakeConn = Callable[..., str]


def rebuilt(trigger: IBFlexStatementTrigger) -> IBFlexStatementTrigger:
    """What the triggerer does: import the classpath and call it with the serialized kwargs."""
    import importlib

    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    json.dumps(kwargs)  # JSON-safe, as the database stores it
    return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))


def test_serialization_round_trip_has_no_token(make_conn: MakeConn, token: str) -> None:
    trigger = IBFlexStatementTrigger("123", deadline=1e9, ibflex_conn_id=make_conn(token), url="https://x/y")
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_ibflex.triggers.ibflex.IBFlexStatementTrigger"
    assert rebuilt(trigger).serialize() == (path, kwargs)
    assert token not in json.dumps(kwargs)


def test_polls_until_ready_with_backoff(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    flex_simulator.add_query("1", generation_polls=3)
    code = flex_simulator.state.issue_reference(token, "1")
    trigger = IBFlexStatementTrigger(
        code, deadline=time.time() + 30, ibflex_conn_id=make_conn(token), poke_interval=0.1, backoff_factor=2
    )
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "ready" and event["reference_code"] == code
    times = [r.at for r in flex_simulator.requests("get")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4 and gaps[-1] > gaps[0] * 1.5, gaps


def test_handoff_fires_poll_without_a_request(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    flex_simulator.add_query("1")
    code = flex_simulator.state.issue_reference(token, "1")
    trigger = IBFlexStatementTrigger(code, time.time() + 30, make_conn(token), handoff=True, poke_interval=3)
    event = asyncio.run(first_event(rebuilt(trigger)))
    assert event["status"] == "poll" and event["interval"] == 3
    assert flex_simulator.requests() == []


def test_reads_decoded_bodies_from_a_compressing_server(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator, tmp_path: Path
) -> None:
    import requests

    from airflow_provider_ibflex.hooks.ibflex import IBFlexHook

    flex_simulator.config.compress = True
    flex_simulator.add_query("1", generation_polls=1)
    code = flex_simulator.state.issue_reference(token, "1")
    probe = requests.get(flex_simulator.base_url + "/GetStatement", params={"t": "x", "q": "1"}, timeout=10)
    assert probe.headers["content-encoding"] == "gzip", "the simulator compresses what clients accept"
    conn_id = make_conn(token)
    event = asyncio.run(
        first_event(IBFlexStatementTrigger(code, time.time() + 30, conn_id, poke_interval=0.05))
    )
    assert event["status"] == "ready", event
    result = IBFlexHook(conn_id).download_statement(code, str(tmp_path / "s.xml"))
    assert result.metadata and result.metadata["sha256"] == flex_simulator.statement("1").sha256()


def test_reads_only_the_head_of_a_statement(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    flex_simulator.add_query("1", size=200_000_000)
    code = flex_simulator.state.issue_reference(token, "1")
    started = time.monotonic()
    event = asyncio.run(first_event(IBFlexStatementTrigger(code, time.time() + 30, make_conn(token))))
    assert event["status"] == "ready"
    assert time.monotonic() - started < 5
    assert flex_simulator.requests("get")[-1].sha256 is None, "the trigger must not read the whole body"


def test_transient_faults_are_waited_out(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    flex_simulator.add_query("1", generation_polls=1)
    for kind in ("http500", "html404", "empty", "garbage", "oversized"):
        flex_simulator.add_fault(kind)
    flex_simulator.add_fault("hang", seconds=10)
    flex_simulator.add_fault("error", code=1018)
    ref = flex_simulator.state.issue_reference(token, "1")
    conn = make_conn(token, read_timeout=0.3, throttle_wait=0.2)
    event = asyncio.run(first_event(IBFlexStatementTrigger(ref, time.time() + 30, conn, poke_interval=0.05)))
    assert event["status"] == "ready"
    answers = [r.answer for r in flex_simulator.requests("get")]
    assert answers[-1] == "statement" and "1018" in answers and "fault:hang" in answers


def test_timeout_at_the_absolute_deadline(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    flex_simulator.add_query("1", generation_polls=10_000)
    ref = flex_simulator.state.issue_reference(token, "1")
    deadline = time.time() + 1.0
    event = asyncio.run(
        first_event(IBFlexStatementTrigger(ref, deadline, make_conn(token), poke_interval=0.1))
    )
    assert event["status"] == "timeout"
    assert abs(time.time() - deadline) < 0.5


def test_missing_connection_is_an_error_event() -> None:
    event = asyncio.run(first_event(IBFlexStatementTrigger("1", time.time() + 5, "no_such_conn")))
    assert event["status"] == "error" and "no_such_conn" in event["message"]


def test_many_triggers_share_the_loop_and_each_tokens_budget(tmp_path: Path) -> None:
    """300 triggers (100 tokens x 3 queries) in one loop: no 1018, and the loop never stalls.

    The simulator and the triggers each run in their own process, as the service and a triggerer
    would: the simulator judges the rate limit on arrival times, and the loop's lag is a triggerer's.
    """
    tokens = [new_token() for _ in range(100)]
    # 300 measured triggers, plus one that warms the triggerer up first.
    references = {str(10**9 + i): tokens[min(i // 3, 99)] for i in range(301)}
    config = {
        "tokens": {token: {} for token in tokens},
        "queries": {"1": {"generation_polls": 2}},
        "rate_limit": [0.2, 0],
        "references": {code: [token, "1"] for code, token in references.items()},
    }
    with simulator_process(config, tmp_path) as info:
        base_url = info["base_url"]
        spec = {
            "base_url": base_url,
            "references": references,
            "poke_interval": 0.1,
            "min_interval": 0.2,
            "per_minute": 0,
        }
        (tmp_path / "load.json").write_text(json.dumps(spec))
        load = subprocess.run(
            [sys.executable, "-m", "benchmarks.trigger_load", str(tmp_path / "load.json")],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")},
        )
        assert load.returncode == 0, load.stderr[-3000:]
        result = json.loads(load.stdout.strip().splitlines()[-1])
        log = request_log(base_url)
    assert result["statuses"] == {"ready": 300}
    answers = [row["answer"] for row in log]
    assert answers.count("1019") == 602 and answers.count("statement") == 301 and "1018" not in answers
    assert result["max_lag_s"] < 0.5, f"event loop stalled for {result['max_lag_s']:.3f} s"


def test_backoff_arithmetic() -> None:
    assert next_interval(10, 1.5, 120) == 15
    assert next_interval(100, 1.5, 120) == 120
    assert all(9 <= jittered(10) <= 11 for _ in range(100))
