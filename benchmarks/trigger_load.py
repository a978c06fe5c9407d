"""Run many IBFlexStatementTriggers in one event loop, as one triggerer would, and measure the loop.

``python -m benchmarks.trigger_load SPEC.json`` reads ``{"base_url",
"references": {code: token}, "poke_interval", "min_interval", "deadline_seconds", "masker_warm"}``,
runs one trigger
per reference code (one connection per token, from environment variables), and prints JSON: the
events' statuses, the worst and p99 event-loop lag, RSS growth per trigger and CPU seconds. It runs in
its own process so that what it measures is a triggerer's loop and memory, not a test runner's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger
from benchmarks.measure import rss_kib, sampled_peak


async def _first_event(trigger: IBFlexStatementTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise RuntimeError("trigger ended without an event")


async def run_measuring_lag(
    triggers: list[IBFlexStatementTrigger],
) -> tuple[list[dict[str, Any]], list[float]]:
    """Run triggers together while a probe records how late the loop wakes it every 10 ms.

    :param triggers: the triggers to run.
    """
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - started - 0.01)

    watcher = asyncio.ensure_future(probe())
    events = await asyncio.gather(*(_first_event(t) for t in triggers))
    done.set()
    await watcher
    return events, lags


def main(argv: list[str]) -> int:
    """Run the load described by the spec file ``argv[0]`` and print the measurements as JSON.

    :param argv: the command-line arguments.
    """
    with open(argv[0]) as handle:
        spec = json.loads(handle.read())
    tokens = sorted(set(spec["references"].values()))
    extra = {
        "min_interval": spec.get("min_interval", 1.0),
        "max_requests_per_minute": spec.get("per_minute", 10),
    }
    extra |= {"read_timeout": 30, "connect_timeout": 10}
    for index, token in enumerate(tokens):
        body = {"conn_type": "ibflex", "password": token, "host": spec["base_url"], "extra": extra}
        os.environ[f"AIRFLOW_CONN_LOAD_{index}"] = json.dumps(body)
    conn_of = {token: f"load_{index}" for index, token in enumerate(tokens)}
    if spec.get("masker_warm"):
        # A triggerer that has run for a while already knows its tokens: Airflow's masker compiled
        # them in long ago. Registering them up front leaves only the polling to measure.
        from airflow.sdk.log import mask_secret

        for token in tokens:
            mask_secret(token)
    deadline = time.time() + spec.get("deadline_seconds", 600)
    codes = list(spec["references"])
    # A running triggerer is warm: its first trigger already paid the HTTP stack's lazy imports.
    warm_code = codes.pop()
    asyncio.run(
        _first_event(
            IBFlexStatementTrigger(
                warm_code, deadline, conn_of[spec["references"][warm_code]], poke_interval=0.05
            )
        )
    )
    triggers = [
        IBFlexStatementTrigger(
            code,
            deadline,
            conn_of[spec["references"][code]],
            poke_interval=spec.get("poke_interval", 0.1),
            backoff_factor=spec.get("backoff_factor", 1.0),
            # As the sensor defers them: it has just polled, so the first poll waits an interval.
            initial_wait=spec.get("poke_interval", 0.1),
        )
        for code in codes
    ]
    rss_before = rss_kib()
    cpu_before = time.process_time()
    started = time.perf_counter()
    with sampled_peak(0.02) as peak:
        events, lags = asyncio.run(run_measuring_lag(triggers))
    lags.sort()
    result = {
        "triggers": len(triggers),
        "statuses": {
            status: [e["status"] for e in events].count(status) for status in {e["status"] for e in events}
        },
        "max_lag_s": lags[-1] if lags else 0.0,
        "p99_lag_s": lags[int(len(lags) * 0.99)] if lags else 0.0,
        "peak_rss_growth_kib_per_trigger": max(peak[0] - rss_before, 0) / max(len(triggers), 1),
        "cpu_s": time.process_time() - cpu_before,
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
