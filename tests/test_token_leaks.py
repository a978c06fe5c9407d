"""The token went nowhere: checked after every other test of the run (conftest orders it last)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import CAPTURE, LANDING_DIRS, REPORT, SEEN, TOKEN


def test_the_token_leaked_nowhere() -> None:
    """Every log record (urllib3, httpx and httpcore at DEBUG included), exception, result, event,
    trigger kwargs and landed file of the fault suite is free of the token."""
    if not REPORT["faults injected"]:
        pytest.skip("the fault suite did not run")
    assert CAPTURE.messages, "the capture must have seen the suite's logs"
    assert SEEN, "the suite's results, events and errors were collected"
    leaks = [m for m in CAPTURE.messages if TOKEN in m]
    leaks += [repr(x) for x in SEEN if TOKEN in repr(x) or TOKEN in str(x)]
    for folder in LANDING_DIRS:
        leaks += [str(p) for p in Path(folder).rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    REPORT["token leaks"] = len(leaks)
    assert leaks == []
