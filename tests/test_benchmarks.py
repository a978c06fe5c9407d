"""The benchmark harness keeps working: every benchmark runs at a tiny size and produces numbers.

Speed is not asserted here (``make bench`` measures it); only that each measurement ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_benchmark_runs_and_produces_numbers(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    anchors_installed = (REPO / ".venv-anchors" / "bin" / "python").exists()

    clients = {row["client"] for row in results["memory"]}
    assert clients == {"provider (Hook)", "plain requests copy", "ibflex 1.1", "ib_async 2.1.0"}
    for row in results["memory"] + results["s3"]:
        if "provider" in row["client"] or "plain" in row["client"] or anchors_installed:
            assert row["seconds"] > 0 and "rss_growth_mib" in row, row
    for row in results["memory"] + results["s3"]:
        if row["client"].startswith(("provider", "plain")):
            assert row["outcome"] == "statement" and row["bytes"] > 0, row

    polling = {row["client"]: row for row in results["polling"]}
    ours = polling["provider (sensor + trigger)"]
    assert (
        ours["outcome"] == "statement" and ours["requests"] >= 2 and ours["latency_after_ready_s"] is not None
    )
    if anchors_installed:
        assert all(row["requests"] >= 1 for row in results["polling"])

    scale_rows = [results["triggerer"], *results["trigger_scale"]]
    assert {(row["kind"], row["gc_freeze"]) for row in results["trigger_scale"]} == {
        (kind, freeze) for kind in ("floor", "peer", "ours") for freeze in (False, True)
    }
    for scale in scale_rows:
        assert scale["statuses"] == {"ready": scale["triggers"]}, scale
        assert scale["cpu_ms_per_poll"] > 0 and scale["polls"] >= scale["triggers"]
        assert "max_lag_s" in scale and "peak_rss_growth_kib_per_trigger" in scale
    shared = results["distributed"]
    assert shared["state"] == "success" and shared["statements_served"] >= shared["queries"] == 3
    assert shared["throttled_1018"] == 0 and shared["min_spacing_s"] >= 1.0
    assert shared["wall_s"] > 0 and shared["ideal_s"] > 0
    assert "Polling cost" in done.stdout and "Triggerer scale" in done.stdout and "One token" in done.stdout
    tables = {row["client"]: row for row in results["tables"]}
    ours = tables["provider (to Parquet)"]
    assert ours["outcome"] == "tables" and ours["rows"] > 0 and ours["seconds"] > 0
    if anchors_installed:
        for row in tables.values():  # the anchors parse the same statement
            assert row["outcome"] in ("tables", "parsed") and abs(row["rows"] - ours["rows"]) <= 6, row
    assert "typed tables" in done.stdout
