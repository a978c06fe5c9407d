"""Faults on the way: broken statement bodies, hostile URLs and redirects, a triggerer restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_ibflex.exceptions import IBFlexFatalError, IBFlexTransientError
from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig
from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger
from tests.conftest import files_under, first_event
from tests.faults import REPORT, SEEN, TOKEN, hook, landed_intact, run_trigger


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
