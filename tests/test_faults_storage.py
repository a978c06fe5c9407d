"""Faults at the destination: a worker killed mid-download, an unwritable folder, S3 going away."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ibflex.exceptions import IBFlexTransientError
from airflow_provider_ibflex.simulator import FlexSimulator
from tests.conftest import MotoS3, files_under
from tests.faults import REPORT, SEEN, TOKEN, hook, landed_intact


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
