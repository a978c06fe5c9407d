"""System test: real Airflow processes (api-server, scheduler, dag-processor, triggerer) on PostgreSQL
with the LocalExecutor (parallelism 16), the simulator in its own process with the service's rate
limit on, and Airflow's UI in a real headless Chromium (``tests.airflow_stack`` starts and stops it all).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.airflow_stack import Stack, airflow_stack, wait_until
from tests.conftest import new_token

pytestmark = pytest.mark.system

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAG_ID = "ibflex_statement_to_storage"
MANY_DAG_ID = "ibflex_many_queries"
# Ten queries on one token, each ready a few seconds after its SendRequest.
MANY_QUERIES = {str(200001 + index): "xml" for index in range(10)}
TOKEN = new_token()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    queries: dict[str, Any] = {
        "100001": {"generation_polls": 2, "size": 100_000, "content": "full", "accounts": 2}
    }
    queries |= {query_id: {"generation_seconds": 5, "size": 50_000} for query_id in MANY_QUERIES}
    # The service's own limit, in real time: 1 request/s and 10/min per token.
    config = {"tokens": {TOKEN: {}}, "queries": queries, "rate_limit": [1.0, 10]}
    home = tmp_path_factory.mktemp("airflow-system")
    with airflow_stack(home, config, dag_ids=(DAG_ID, MANY_DAG_ID)) as running:
        yield running


def test_example_dag_defers_and_lands_in_a_real_airflow(stack: Stack) -> None:
    run_id = "system_test_run"
    assert stack.run_dag(DAG_ID, run_id, 300) == "success"
    instances = stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    assert {t["task_id"]: t["state"] for t in instances} == {
        "send_request": "success",
        "land_statement": "success",
        "statement_to_tables": "success",
        "statement_to_delta": "success",
    }

    # Airflow's own records: the sensor went through DEFERRED, and the triggerer ran its trigger.
    events = stack.get("/eventLogs", dag_id=DAG_ID, run_id=run_id, task_id="land_statement", limit=100)
    states = [e["event"] for e in events["event_logs"]]
    assert "deferred" in states and states.count("running") == 2, states
    log = task_log(stack, run_id, "land_statement")
    assert "Pausing task as DEFERRED" in log
    assert "(ID " in log and "Trigger fired event" in log
    assert "not ready yet" in log or "deferring to the triggerer" in log

    landed = stack.home / "statements" / "ibflex" / "2026-11-20" / "100001.xml"
    assert landed.read_bytes().rstrip().endswith(b"</FlexQueryResponse>")
    tables = stack.home / "statements" / "ibflex" / "tables"
    manifest = json.loads((tables / "_manifests" / "2026-11-20-100001.json").read_text())
    assert manifest["statements"]["found"] == 2 and manifest["statements"]["check"] == "passed"
    trades = tables / "section=Trades" / "element=Trade" / f"2026-11-20-100001.{manifest['run']}.parquet"
    assert trades.exists() and manifest["tables"]["Trades/Trade"]["uri"] == f"file://{trades}"

    # The token is in no task log, XCom, rendered template field or event.
    texts = [log, task_log(stack, run_id, "send_request"), json.dumps(events)]
    for task_id in ("send_request", "land_statement"):
        texts.append(json.dumps(stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")))
        texts.append(
            json.dumps(stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries"))
        )
    xcom = stack.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/land_statement/xcomEntries/return_value")
    texts.append(json.dumps(xcom))
    assert '"sha256"' in xcom["value"] or "sha256" in json.dumps(xcom["value"])
    for text in texts:
        assert TOKEN not in text


def test_ten_queries_on_one_token_land_with_no_1018(stack: Stack) -> None:
    """Ten mapped SendRequests and sensors at once, on workers and the triggerer, against the service's
    real limits: each request waits for the token's shared budget, none draws 1018, all land."""
    from airflow_provider_ibflex.simulator.process import request_log

    run_id = "many_queries_run"
    assert stack.run_dag(MANY_DAG_ID, run_id, 600, conf={"queries": MANY_QUERIES}) == "success"
    instances = stack.get(f"/dags/{MANY_DAG_ID}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"]
    landing = [t for t in instances if t["task_id"] == "land_statement"]
    assert len(landing) == 10 and {t["state"] for t in landing} == {"success"}
    assert {t["try_number"] for t in instances} == {1}, "a busy token costs no task a retry"
    folder = stack.home / "statements" / "ibflex" / "2026-11-20"
    for query_id in MANY_QUERIES:
        assert (folder / f"{query_id}.xml").read_bytes().rstrip().endswith(b"</FlexQueryResponse>")

    log = request_log(stack.simulator)  # every request of the token, both DAG runs included
    answers = [row["answer"] for row in log]
    assert "1018" not in answers and answers.count("statement") >= 11, answers
    times = sorted(row["at"] for row in log)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 1.0, f"two requests {min(gaps):.3f} s apart"
    per_minute = max(sum(1 for t in times if start <= t < start + 60) for start in times)
    assert per_minute <= 10, per_minute


def task_log(stack: Stack, run_id: str, task_id: str) -> str:
    response = requests.get(
        f"{stack.api}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
        headers={"Accept": "application/json"},
        timeout=30,
    )
    response.raise_for_status()
    content = response.json()["content"]
    return "\n".join(str(line.get("event", "")) if isinstance(line, dict) else str(line) for line in content)


def test_connection_form_in_a_real_browser(stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium package is needed (make test installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{stack.api}/connections", wait_until="networkidle")
            page.get_by_role("button", name="Add Connection").click()
            dialog = page.get_by_role("dialog")
            dialog.locator("input[name=connection_id]").fill("ibflex_from_ui")
            dialog.get_by_role("combobox").fill("Interactive Brokers")
            page.keyboard.press("Enter")

            host = dialog.locator("input[name=host]")
            password = dialog.locator("input[name=password]")
            host.wait_for(state="visible")
            assert dialog.get_by_text("Service base URL", exact=True).is_visible()
            assert dialog.get_by_text("Flex Web Service token", exact=True).is_visible()
            assert host.get_attribute("placeholder") == (
                "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService"
            )
            assert password.get_attribute("type") == "password"
            for hidden in ("login", "port", "schema"):
                assert dialog.locator(f"input[name={hidden}]").count() == 0, hidden
            password.fill("ui-token-1234")
            host.fill("https://flex.example.org/AccountManagement/FlexWebService")

            dialog.get_by_role("button", name="Extra Fields", exact=True).click()
            assert dialog.get_by_text("Flex Web Service version").is_visible()
            user_agent = dialog.locator("input[name=element_user_agent]")
            user_agent.wait_for(state="visible")
            user_agent.fill("my-desk/2.0")
            page.screenshot(path=str(stack.home / "connection-form.png"))
            dialog.get_by_role("button", name="Save").click()
            wait_until("the connection to be saved", lambda: stack.get("/connections/ibflex_from_ui"), 30)
        finally:
            browser.close()

    saved = stack.get("/connections/ibflex_from_ui")
    assert saved["conn_type"] == "ibflex"
    assert saved["host"] == "https://flex.example.org/AccountManagement/FlexWebService"
    assert json.loads(saved["extra"])["user_agent"] == "my-desk/2.0"
    assert "ui-token-1234" not in json.dumps(saved)
