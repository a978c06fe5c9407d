"""The fault-injection suite's shared state and fixtures (a pytest plugin, loaded by conftest).

Every fault goes through the simulator over real HTTP at each step where it can happen: SendRequest
(the Hook), the trigger's poll, and the final download (the Hook, to real files or moto's S3). The
``test_faults_*``, ``test_attacks`` and ``test_bad_input`` modules use one distinctive token
throughout; ``test_token_leaks`` runs after every other test and checks that it appears in no
captured log record, exception, event, trigger kwargs or file. ``REPORT`` counts what was tried and
what held; the summary is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig
from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger
from tests.conftest import FAST_EXTRAS, files_under, first_event, new_token, sha256_of

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


def waited_out(sim: FlexSimulator, land: Path, step: str) -> None:
    """A one-off fault at ``step`` costs one more try and nothing else: SendRequest succeeds on its
    second request, the trigger reports ready, or the download lands intact.

    :param sim: the module's simulator, with query ``1`` and the fault scripted.
    :param land: the landing folder.
    :param step: ``send``, ``poll`` or ``download``.
    """
    if step == "send":
        SEEN.append(hook().send_request("1"))
        assert len(sim.requests("send")) == 2
    elif step == "poll":
        assert run_trigger(sim.state.issue_reference(TOKEN, "1"))["status"] == "ready"
    else:
        dest = land / "s.xml"
        landed_intact(hook().download_statement(sim.state.issue_reference(TOKEN, "1"), str(dest)), dest, sim)
