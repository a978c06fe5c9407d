"""Run many triggers in one event loop, as one triggerer would, and measure the loop.

``python -m benchmarks.trigger_load SPEC.json`` reads ``{"kind", "base_url", "references": {code:
token}, "poke_interval", "min_interval", "deadline_seconds", "masker_warm", "gc_freeze", "polls"}`` and
runs one trigger per reference code: ``ours`` (IBFlexStatementTrigger, one connection per token, from
environment variables), ``peer`` (Airflow's HttpSensorTrigger polling the same GetStatement URLs,
which answer 404 until the statement is ready) or ``floor`` (triggers that only sleep as long as the
others poll). It prints JSON: the events' statuses, the worst and p99 event-loop lag, RSS growth per
trigger and CPU seconds. It runs in its own process so that what it measures is a triggerer's loop and
memory, not a test runner's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger
from benchmarks.measure import rss_kib, sampled_peak


class SleepingTrigger(BaseTrigger):
    """The floor: a trigger that waits as long as a poller would, and does nothing else.

    :param sleeps: how many waits.
    :param interval: seconds each.
    """

    def __init__(self, sleeps: int, interval: float) -> None:
        super().__init__()
        self.sleeps, self.interval = sleeps, interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.SleepingTrigger", {"sleeps": self.sleeps, "interval": self.interval}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        for _ in range(self.sleeps):
            await asyncio.sleep(self.interval)
        yield TriggerEvent({"status": "ready"})


async def _first_event(trigger: BaseTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        payload = event.payload
        return dict(payload) if isinstance(payload, dict) else {"status": "ready" if payload else "?"}
    raise RuntimeError("trigger ended without an event")


async def run_measuring_lag(triggers: list[BaseTrigger]) -> tuple[list[dict[str, Any]], list[float]]:
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


def _ours(spec: dict[str, Any], codes: list[str], deadline: float) -> list[BaseTrigger]:
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
        from airflow.providers.common.compat.sdk import mask_secret

        for token in tokens:
            mask_secret(token)
    # A running triggerer is warm: its first trigger already paid the HTTP stack's lazy imports.
    warm = codes.pop()
    trigger = IBFlexStatementTrigger(warm, deadline, conn_of[spec["references"][warm]], poke_interval=0.05)
    asyncio.run(_first_event(trigger))
    return [
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


def _peer(spec: dict[str, Any], codes: list[str]) -> list[BaseTrigger]:
    from airflow.providers.http.triggers.http import HttpSensorTrigger

    base = spec["base_url"].rstrip("/")
    os.environ["AIRFLOW_CONN_PEER_HTTP"] = json.dumps({"conn_type": "http", "host": base})
    warm = codes.pop()

    def peer(code: str) -> HttpSensorTrigger:
        params = {"t": spec["references"][code], "q": code, "v": "3"}
        return HttpSensorTrigger(
            endpoint="GetStatement",
            http_conn_id="peer_http",
            data=params,
            poke_interval=spec["poke_interval"],
        )

    asyncio.run(_first_event(peer(warm)))
    return [peer(code) for code in codes]


def main(argv: list[str]) -> int:
    """Run the load described by the spec file ``argv[0]`` and print the measurements as JSON.

    :param argv: the command-line arguments.
    """
    with open(argv[0]) as handle:
        spec = json.loads(handle.read())
    deadline = time.time() + spec.get("deadline_seconds", 600)
    codes = list(spec["references"])
    kind = spec.get("kind", "ours")
    triggers: list[BaseTrigger]
    if kind == "ours":
        triggers = _ours(spec, codes, deadline)
    elif kind == "peer":
        triggers = _peer(spec, codes)
    else:
        codes.pop()
        triggers = [SleepingTrigger(spec.get("polls", 4), spec["poke_interval"]) for _ in codes]
    if spec.get("gc_freeze"):
        # What a triggerer process may do once it has imported everything: keep the heap it will
        # never free out of every collection.
        gc.collect()
        gc.freeze()
    rss_before = rss_kib()
    cpu_before = time.process_time()
    started = time.perf_counter()
    with sampled_peak(0.02) as peak:
        events, lags = asyncio.run(run_measuring_lag(triggers))
    lags.sort()
    result = {
        "kind": kind,
        "gc_freeze": bool(spec.get("gc_freeze")),
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
