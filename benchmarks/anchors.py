"""Cases for the anchors, ibflex 1.1 and ib_async 2.1.0, pointed at the simulator.

Run in the anchors' own environment (``.venv-anchors``): ``python benchmarks/anchors.py CASE SPEC``.
Only the standard library, requests and the anchors are imported here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from measure import emit, measured, scale_sleep


def run_ibflex(spec: dict[str, Any], result: dict[str, Any]) -> None:
    from ibflex import client

    client.REQUEST_URL = spec["base_url"] + "/SendRequest"
    client.STMT_URL = spec["base_url"] + "/GetStatement"
    with measured(result):
        try:
            data = client.download(spec["token"], spec["query_id"])
            Path(spec["destination"]).write_bytes(data)
            result["outcome"] = "statement" if b"</FlexQueryResponse>" in data[-200:] else "not a statement"
        except Exception as exc:  # what the anchor does on failure is the measurement
            result["outcome"] = f"{type(exc).__name__}"
    result["landed_at"] = time.time()


def run_ib_async(spec: dict[str, Any], result: dict[str, Any]) -> None:
    os.environ["IB_FLEXREPORT_URL"] = spec["base_url"] + "/SendRequest?"
    from ib_async.flexreport import FlexReport

    with measured(result):
        try:
            report = FlexReport(spec["token"], spec["query_id"])
            report.save(spec["destination"])
            data = report.data
            result["outcome"] = (
                "statement"
                if data.lstrip().startswith(b"<FlexQueryResponse")
                else "envelope taken as statement"
            )
        except Exception as exc:  # what the anchor does on failure is the measurement
            result["outcome"] = f"{type(exc).__name__}"
    result["landed_at"] = time.time()


def parse_ibflex(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """ibflex's parser on a landed statement: every row becomes a typed dataclass."""
    import dataclasses

    from ibflex import parser

    with measured(result):
        try:
            response = parser.parse(spec["source"])
            rows = 0
            for statement in response.FlexStatements:
                for field in dataclasses.fields(statement):
                    value = getattr(statement, field.name)
                    if isinstance(value, tuple):
                        rows += len(value)
                    elif dataclasses.is_dataclass(value):
                        rows += 1
            result["rows"] = rows
            result["outcome"] = "parsed"
        except Exception as exc:  # what the anchor does on failure is the measurement
            result["outcome"] = f"{type(exc).__name__}"


def frames_ib_async(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """ib_async's FlexReport on a landed statement: one DataFrame per row element (``df``)."""
    from ib_async.flexreport import FlexReport

    containers = {"FlexQueryResponse", "FlexStatements", "FlexStatement"}
    with measured(result):
        try:
            report = FlexReport(path=spec["source"])
            result["rows"] = sum(len(report.df(topic)) for topic in report.topics() - containers)
            result["outcome"] = "parsed"
        except Exception as exc:  # what the anchor does on failure is the measurement
            result["outcome"] = f"{type(exc).__name__}"


def main() -> None:
    case, spec = sys.argv[1], json.loads(sys.argv[2])
    if spec.get("time_scale", 1) != 1:
        scale_sleep(spec["time_scale"])
    result: dict[str, Any] = {"case": case}
    cases = {
        "ibflex": run_ibflex,
        "ib_async": run_ib_async,
        "ibflex_parse": parse_ibflex,
        "ib_async_df": frames_ib_async,
    }
    cases[case](spec, result)
    emit(result)


if __name__ == "__main__":
    main()
