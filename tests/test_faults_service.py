"""Faults at the service: every error code at every step, broken answers, a throttling storm."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_ibflex.exceptions import IBFlexFatalError
from airflow_provider_ibflex.protocol import (
    ERROR_TABLE,
    Action,
)
from airflow_provider_ibflex.simulator import FlexSimulator
from tests.conftest import files_under
from tests.faults import REPORT, SEEN, TOKEN, hook, landed_intact, run_trigger, waited_out

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


BODY_FAULTS = ["http500", "html404", "empty", "garbage", "hang", "oversized"]


@pytest.mark.parametrize("kind", BODY_FAULTS)
@pytest.mark.parametrize("step", ["send", "poll", "download"])
def test_broken_answers_are_waited_out(sim: FlexSimulator, land: Path, kind: str, step: str) -> None:
    sim.add_query("1", size=30_000)
    sim.add_fault(kind, step="send" if step == "send" else "get", seconds=5)
    REPORT["faults injected"] += 1
    waited_out(sim, land, step)


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
