"""Benchmark cases on the provider's side, each run in its own process by ``benchmarks.run``.

``python -m benchmarks.cases CASE SPEC_JSON`` prints one JSON line: seconds, RSS growth, and what the
case counts. The simulator (and moto, for S3) run in other processes, started by the orchestrator.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from benchmarks.measure import emit, measured


def _connection(spec: dict[str, Any], scale: float = 1.0, paced: bool = True) -> str:
    extra = {
        "min_interval": 1.0 / scale if paced else 0.0,
        "rate_window": 60.0 / scale,
        "throttle_wait": 60.0 / scale,
        "backoff_max": 30.0 / scale,
        "read_timeout": 120,
    }
    body = {"conn_type": "ibflex", "password": spec["token"], "host": spec["base_url"], "extra": extra}
    os.environ["AIRFLOW_CONN_BENCH"] = json.dumps(body)
    return "bench"


def hook_download(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """The Hook lands a ready statement at a destination (file:// or s3://)."""
    from airflow_provider_ibflex.hooks.ibflex import IBFlexHook

    if spec.get("aws"):
        os.environ["AIRFLOW_CONN_BENCH_S3"] = json.dumps(spec["aws"])
    from airflow_provider_ibflex.storage import resolve_destination

    # Throughput, not pacing: the simulator enforces no rate limit here, so neither does the Hook.
    hook = IBFlexHook(_connection(spec, paced=False))
    # A first, tiny download pays the one-time costs (lazy imports of the storage stack) outside the
    # measurement, as a worker that has landed one statement already has.
    store = "bench_s3" if spec.get("aws") else None
    warm = str(resolve_destination(spec["destination"], store)) + ".warm"
    hook.download_statement("1000000003", warm, destination_conn_id=store)
    with measured(result):
        landed = hook.download_statement(
            spec["reference"],
            spec["destination"],
            destination_conn_id="bench_s3" if spec.get("aws") else None,
        )
    result["outcome"] = "statement" if landed.landed else landed.state
    result["bytes"] = landed.metadata["size"] if landed.metadata else 0


def plain_copy(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """The floor: requests streaming GetStatement straight into a file (or an s3fs file)."""
    import requests

    params = {"t": spec["token"], "q": spec["reference"], "v": "3"}
    with measured(result):
        response = requests.get(spec["base_url"] + "/GetStatement", params=params, stream=True, timeout=120)
        size = 0
        with _open_destination(spec) as handle:
            for chunk in response.iter_content(1024 * 1024):
                handle.write(chunk)
                size += len(chunk)
    result["outcome"] = "statement"
    result["bytes"] = size


def _open_destination(spec: dict[str, Any]) -> Any:
    if spec.get("aws"):
        import s3fs

        extra = spec["aws"]["extra"]
        fs = s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            client_kwargs={"endpoint_url": extra["endpoint_url"], "region_name": extra["region_name"]},
        )
        return fs.open(spec["destination"].removeprefix("s3://"), "wb")
    return open(spec["destination"].removeprefix("file://"), "wb")


def provider_polling(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """The provider's flow with its defaults, in compressed time: SendRequest, one poke on the worker,
    the trigger's schedule until ready, then the download."""
    from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
    from airflow_provider_ibflex.storage import resolve_destination
    from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger

    scale = spec["time_scale"]
    hook = IBFlexHook(_connection(spec, scale))
    # Fixed start-up costs would be multiplied by the time scale: pay them before SendRequest.
    resolve_destination(spec["destination"])
    asyncio.run(_warm_connection())
    reference = hook.send_request(spec["query_id"])
    landed = hook.download_statement(reference.reference_code, spec["destination"])
    if not landed.landed:
        # As the deferrable sensor does with poke_interval=10 (the example DAG's): the trigger waits
        # one interval after the worker's poke, then backs off x2 up to 120 s; all compressed.
        trigger = IBFlexStatementTrigger(
            reference.reference_code,
            time.time() + 3600 / scale,
            "bench",
            poke_interval=10 / scale,
            max_poke_interval=120 / scale,
            initial_wait=10 / scale,
        )

        async def wait() -> dict[str, Any]:
            async for event in trigger.run():
                return dict(event.payload)
            raise RuntimeError("no event")

        event = asyncio.run(wait())
        result["trigger_status"] = event["status"]
        landed = hook.download_statement(reference.reference_code, spec["destination"])
    result["landed_at"] = time.time()
    result["outcome"] = "statement" if landed.landed else landed.state


async def _warm_connection() -> None:
    from airflow_provider_ibflex.triggers.ibflex import load_connection

    await load_connection("bench")


def tables_convert(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """The converter turns a landed XML statement into Parquet tables."""
    from airflow_provider_ibflex.tables import convert_statement

    # A first, small conversion pays the one-time costs (pyarrow's kernels and thread pools, the
    # allocators' first arenas) outside the measurement, as a worker that has converted one
    # statement already has.
    convert_statement(spec["warm"], spec["destination"] + "-warm")
    with measured(result):
        manifest = convert_statement(spec["source"], spec["destination"])
    result["rows"] = manifest["rows"]
    result["outcome"] = "tables"


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def delta_daily(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """Daily statements merged one after another into the same Delta tables, as a worker would."""
    from deltalake import DeltaTable

    from airflow_provider_ibflex.tables import convert_statement

    days = []
    for number, source in enumerate(spec["sources"], start=1):
        started = time.perf_counter()
        convert_statement(source, spec["destination"], output_format="delta", name=f"day-{number:02d}")
        trades = DeltaTable(os.path.join(spec["destination"], "Trades", "Trade"))
        days.append(
            {
                "seconds": time.perf_counter() - started,
                "trade_rows": trades.to_pyarrow_dataset().count_rows(),
                "table_bytes": _folder_bytes(spec["destination"]),
            }
        )
    result["days"] = days
    result["outcome"] = "tables"


def delta_merge(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """One large statement merged into Delta tables that already hold days of statements."""
    from airflow_provider_ibflex.tables import convert_statement

    convert_statement(spec["warm"], spec["warm_destination"], output_format="delta")  # the one-time costs
    with measured(result):
        manifest = convert_statement(spec["source"], spec["destination"], output_format="delta", name="large")
    result["rows"] = manifest["rows"]
    result["outcome"] = "tables"


CASES = {
    "hook": hook_download,
    "plain": plain_copy,
    "provider_polling": provider_polling,
    "tables": tables_convert,
    "delta_daily": delta_daily,
    "delta_merge": delta_merge,
}


def main() -> None:
    case, spec = sys.argv[1], json.loads(sys.argv[2])
    result: dict[str, Any] = {"case": case}
    CASES[case](spec, result)
    emit(result)


if __name__ == "__main__":
    main()
