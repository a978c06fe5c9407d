"""The simulator in its own process, for when the client under test must not share its interpreter
(benchmarks, load tests, demos): ``with simulator_process(config, workdir) as info: info["base_url"]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests


@contextmanager
def simulator_process(
    config: dict[str, Any] | None, workdir: Path, *, env: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Run ``python -m airflow_provider_ibflex.simulator`` until the block ends.

    Yields what the CLI's ready file holds: ``base_url``, ``token``, ``query_ids``, ``connection``.

    :param config: the simulator's configuration in its JSON form; None for the demo configuration.
    :param workdir: a folder for the configuration and ready files.
    :param env: the process's environment (this process's by default).
    """
    name = uuid.uuid4().hex[:8]
    command = [sys.executable, "-m", "airflow_provider_ibflex.simulator"]
    if config is not None:
        path = workdir / f"simulator-{name}.json"
        path.write_text(json.dumps(config))
        command += ["--config", str(path)]
    ready = workdir / f"simulator-{name}.ready"
    process = subprocess.Popen([*command, "--ready-file", str(ready)], stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the Flex simulator did not start")
            time.sleep(0.05)
        time.sleep(0.05)  # the ready file is written in one call; let it land whole
        yield dict(json.loads(ready.read_text()))
    finally:
        process.terminate()
        process.wait(timeout=30)


def request_log(base_url: str) -> list[dict[str, Any]]:
    """The simulator's request log over HTTP (tokens replaced by their non-secret keys).

    :param base_url: the simulator's base URL.
    """
    root = base_url.split("/AccountManagement")[0]
    return list(requests.get(root + "/_simulator/requests", timeout=60).json())


def add_fault(base_url: str, kind: str, **spec: Any) -> None:
    """Script a fault in a simulator running in another process (see ``Fault``).

    :param base_url: the simulator's base URL.
    :param kind: the fault's kind.
    :param spec: its other fields.
    """
    root = base_url.split("/AccountManagement")[0]
    requests.post(root + "/_simulator/faults", json={"kind": kind, **spec}, timeout=60).raise_for_status()
