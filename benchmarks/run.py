"""``make bench``: memory, throughput, polling cost, triggerer scale, one token shared by a distributed
Airflow, and converting statements into tables, against the anchors where they apply, in one run.

Every measurement runs in its own process (so peak RSS is that process's); the simulator runs in
another process, moto in this one. Prints one table and writes the same figures to
``benchmarks/results.json``. ``--smoke`` runs every benchmark at a tiny size (for CI: it checks the
harness works and produces numbers, not how fast anything is).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_provider_ibflex.simulator.process import request_log, simulator_process
from benchmarks.distributed import bench_distributed

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ANCHORS_PYTHON = REPO / ".venv-anchors" / "bin" / "python"
TOKEN = "880011223344556677889900"
MB = 1_000_000


# -- processes -------------------------------------------------------------------------------------


@contextlib.contextmanager
def simulator(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """The simulator in its own process; yields its base URL."""
    with simulator_process(config, workdir) as info:
        yield str(info["base_url"])


def ready_statement(size: int) -> dict[str, Any]:
    """A simulator configuration with one ready statement of ``size`` bytes and two reference codes."""
    return {
        "tokens": {TOKEN: {}},
        "queries": {"1": {"size": size}, "2": {"size": 10_000}},
        "rate_limit": None,
        "record_digests": False,
        "references": {"1000000001": [TOKEN, "1"], "1000000002": [TOKEN, "1"], "1000000003": [TOKEN, "2"]},
    }


def run_case(client: str, case: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh process and return its JSON result."""
    if client == "anchor":
        if not ANCHORS_PYTHON.exists():
            return {"case": case, "outcome": "anchors not installed (make anchors)"}
        command = [str(ANCHORS_PYTHON), str(HERE / "anchors.py"), case, json.dumps(spec)]
    else:
        command = [sys.executable, "-m", "benchmarks.cases", case, json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"case": case, "outcome": f"crashed: {done.stderr.strip().splitlines()[-1:]}"}
    return dict(json.loads(lines[-1]))


# -- 1 and 2: memory and throughput ------------------------------------------------------------------


def bench_memory(sizes: list[int], workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        with simulator(ready_statement(size), workdir) as base_url:
            common = {"base_url": base_url, "token": TOKEN, "query_id": "1"}
            runs = [
                ("provider (Hook)", "ours", "hook", {"reference": "1000000001"}),
                ("plain requests copy", "ours", "plain", {"reference": "1000000002"}),
                ("ibflex 1.1", "anchor", "ibflex", {}),
                ("ib_async 2.1.0", "anchor", "ib_async", {}),
            ]
            for name, client, case, extra in runs:
                destination = workdir / f"{case}-{size}.xml"
                url = f"file://{destination}" if client == "ours" else str(destination)
                result = run_case(client, case, {**common, **extra, "destination": url})
                landed = destination.stat().st_size if destination.exists() else 0
                destination.unlink(missing_ok=True)
                rows.append({"size_mb": size / MB, "client": name, "bytes": landed, **result})
    return rows


def bench_s3(size: int, workdir: Path) -> list[dict[str, Any]]:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="eu-west-1",
        )
        s3.create_bucket(Bucket="bench", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        aws = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "eu-west-1"},
        }
        rows = []
        with simulator(ready_statement(size), workdir) as base_url:
            for name, case, reference in (
                ("provider (Hook) to S3", "hook", "1000000001"),
                ("plain s3fs copy", "plain", "1000000002"),
            ):
                spec = {"base_url": base_url, "token": TOKEN, "reference": reference, "aws": aws}
                result = run_case("ours", case, {**spec, "destination": f"s3://bench/{case}.xml"})
                rows.append({"size_mb": size / MB, "client": name, **result})
        return rows
    finally:
        server.stop()


# -- 3: polling cost ---------------------------------------------------------------------------------


def bench_polling(generation_seconds: list[float], scale: float, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for seconds in generation_seconds:
        for name, client, case in (
            ("provider (sensor + trigger)", "ours", "provider_polling"),
            ("ib_async 2.1.0", "anchor", "ib_async"),
            ("ibflex 1.1", "anchor", "ibflex"),
        ):
            config = {
                "tokens": {TOKEN: {}},
                "queries": {"1": {"size": 200_000, "generation_seconds": seconds}},
                "rate_limit": [1.0, 10],
                "time_scale": scale,
            }
            with simulator(config, workdir) as base_url:
                destination = workdir / f"poll-{case}.xml"
                spec = {
                    "base_url": base_url,
                    "token": TOKEN,
                    "query_id": "1",
                    "time_scale": scale,
                    "destination": f"file://{destination}" if client == "ours" else str(destination),
                }
                result = run_case(client, case, spec)
                finished = result.get("landed_at")
                log = request_log(base_url)
                destination.unlink(missing_ok=True)
            sends = [row for row in log if row["call"] == "send"]
            ready_at = (sends[0]["at"] + seconds / scale) if sends else None
            landed_ok = result.get("outcome") == "statement"
            rows.append(
                {
                    "generation_s": seconds,
                    "client": name,
                    "outcome": result.get("outcome"),
                    "requests": len(log),
                    "throttled_1018": sum(row["answer"] == "1018" for row in log),
                    "latency_after_ready_s": (finished - ready_at) * scale
                    if ready_at and landed_ok
                    else None,
                }
            )
    return rows


# -- 4: triggerer scale ------------------------------------------------------------------------------


def bench_triggerer(
    count: int,
    workdir: Path,
    *,
    kind: str = "ours",
    masker_warm: bool = True,
    gc_freeze: bool = False,
    poke_interval: float = 5.0,
) -> dict[str, Any]:
    """``count`` triggers in one event loop, each polling its own statement four times (ready at the
    fourth): ours, Airflow's HttpSensorTrigger on the same URLs (the peer), or triggers that only
    sleep as long (the floor).

    :param count: how many triggers.
    :param workdir: a folder for the simulator's files.
    :param kind: ``ours``, ``peer`` or ``floor``.
    :param masker_warm: the tokens are already known to Airflow's masker (a triggerer that has run).
    :param gc_freeze: freeze the process's heap before the triggers start.
    :param poke_interval: seconds between polls.
    """
    # Random 24-digit tokens, as Account Management issues them (one per account).
    tokens = ["".join(secrets.choice("0123456789") for _ in range(24)) for _ in range(count + 1)]
    references = {str(2_000_000_000 + index): token for index, token in enumerate(tokens)}
    query = "2" if kind == "peer" else "1"
    config = {
        "tokens": {token: {} for token in tokens},
        # The peer knows only HTTP statuses: "not ready" comes to it as 404, which it polls past.
        "queries": {
            "1": {"generation_polls": 3, "size": 2000},
            "2": {"generation_polls": 3, "size": 2000, "pending_status": 404},
        },
        "rate_limit": [1.0, 10],
        "references": {code: [token, query] for code, token in references.items()},
    }
    with simulator(config, workdir) as base_url:
        spec = {
            "kind": kind,
            "base_url": base_url,
            "references": references,
            "poke_interval": poke_interval,
            "min_interval": 1.0,
            "masker_warm": masker_warm,
            "gc_freeze": gc_freeze,
            "polls": 4,
        }
        path = workdir / "load.json"
        path.write_text(json.dumps(spec))
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.trigger_load", str(path)],
            capture_output=True,
            text=True,
            timeout=3600,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")},
        )
        log = request_log(base_url)
    if done.returncode != 0:
        return {
            "kind": kind,
            "gc_freeze": gc_freeze,
            "outcome": f"crashed: {done.stderr.strip().splitlines()[-1:]}",
        }
    result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    # Less the warm-up trigger's polls; the floor's "polls" are its sleeps.
    polls = sum(row["call"] == "get" for row in log) - 4 if kind != "floor" else 4 * result["triggers"]
    result["polls"] = polls
    result["cpu_ms_per_poll"] = 1000 * result["cpu_s"] / max(polls, 1)
    result["throttled_1018"] = sum(row["answer"] == "1018" for row in log)
    return result


def bench_trigger_scale(count: int, workdir: Path, poke_interval: float = 5.0) -> list[dict[str, Any]]:
    """The floor, the peer and ours, with and without ``gc.freeze()``, in one run."""
    return [
        bench_triggerer(count, workdir, kind=kind, gc_freeze=freeze, poke_interval=poke_interval)
        for freeze in (False, True)
        for kind in ("floor", "peer", "ours")
    ]


# -- 6: statements as tables -------------------------------------------------------------------------


def bench_tables(size: int, workdir: Path) -> list[dict[str, Any]]:
    """Convert one XML statement (two accounts, every common section) with ours and the anchors'
    parsers, each in its own process."""
    from airflow_provider_ibflex.simulator import GeneratedStatement, StatementShape

    def write(path: Path, size: int) -> None:
        # No unknown fields: the anchors' parsers must accept the statement.
        statement = GeneratedStatement(StatementShape(content="full", accounts=2, extras=False, size=size))
        with path.open("wb") as out:
            for chunk in statement.chunks():
                out.write(chunk)

    source, warm = workdir / "statement.xml", workdir / "warm.xml"
    write(source, size)
    # The warm-up converts a statement big enough to fill a batch: what it leaves behind (libraries,
    # thread pools, the allocators' first arenas) is the steady state of a worker, not the statement.
    write(warm, 5 * MB)
    spec = {"source": str(source), "warm": str(warm), "destination": str(workdir / "tables")}
    rows = []
    for name, client, case in (
        ("provider (to Parquet)", "ours", "tables"),
        ("ibflex 1.1 parser", "anchor", "ibflex_parse"),
        ("ib_async 2.1.0 FlexReport.df", "anchor", "ib_async_df"),
    ):
        result = run_case(client, case, spec)
        rows.append({"size_mb": source.stat().st_size / MB, "client": name, **result})
    source.unlink()
    return rows


# -- 7: statement history in Delta Lake --------------------------------------------------------------


def _daily_statement(path: Path, size: int, number: int) -> None:
    """Day ``number``'s statement: the full statement's shape, with its own trades (transaction ids
    unique to the day) and dates, as a daily query gives."""
    from airflow_provider_ibflex.simulator import GeneratedStatement, StatementShape

    statement = GeneratedStatement(StatementShape(content="full", accounts=2, extras=False, size=size))
    day = (datetime.date(2026, 10, 1) + datetime.timedelta(days=number - 1)).strftime("%Y%m%d")
    with path.open("wb") as out:
        for chunk in statement.chunks():
            chunk = chunk.replace(b'transactionID="9', f'transactionID="{number:02d}'.encode())
            chunk = chunk.replace(b"20261120", day.encode()).replace(b"20261123;", f"{day};".encode())
            out.write(chunk)


def bench_delta(daily_size: int, days: int, large_size: int, workdir: Path) -> dict[str, Any]:
    """``days`` daily statements merged into Delta tables, then a large statement merged into them,
    against the same large statement converted to plain Parquet."""
    sources = []
    for number in range(1, days + 1):
        path = workdir / f"daily-{number:02d}.xml"
        _daily_statement(path, daily_size, number)
        sources.append(str(path))
    destination = workdir / "delta"
    daily = run_case("ours", "delta_daily", {"sources": sources, "destination": str(destination)})
    for source in sources:
        Path(source).unlink()
    large, warm = workdir / "large.xml", workdir / "warm.xml"
    _daily_statement(large, large_size, days + 1)
    _daily_statement(warm, 5 * MB, days + 2)
    merge = run_case(
        "ours",
        "delta_merge",
        {
            "source": str(large),
            "destination": str(destination),
            "warm": str(warm),
            "warm_destination": str(workdir / "warm-delta"),
        },
    )
    parquet = run_case(
        "ours",
        "tables",
        {"source": str(large), "warm": str(warm), "destination": str(workdir / "parquet")},
    )
    large_mb = large.stat().st_size / MB
    large.unlink()
    return {
        "daily_mb": daily_size / MB,
        "daily": daily.get("days") or [],
        "daily_outcome": daily.get("outcome"),
        "large_mb": large_mb,
        "merge": merge,
        "parquet": parquet,
    }


def bench_delta_sized(smoke: bool, workdir: Path) -> dict[str, Any]:
    """Section 7 at its size: 30 days of 10 MB and 1 GB, or a smoke run's few small ones."""
    if smoke:
        return bench_delta(200_000, 3, 2 * MB, workdir)
    return bench_delta(10 * MB, 30, 1000 * MB, workdir)


# -- report ------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report(results: dict[str, Any]) -> str:
    """The table of a run's results: every section they hold (an --only run holds one)."""
    lines = [f"Machine: {results.get('machine') or machine()}"]
    if results.get("memory"):
        lines += landing_report(results)
    lines += scale_report(results)
    lines += tables_report(results)
    lines += delta_report(results.get("delta"))
    lines += ["", "Targets"]
    for goal, measured, met in targets(results):
        lines.append(f"  {'met   ' if met else 'MISSED'}  {goal}: {measured}")
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def landing_report(results: dict[str, Any]) -> list[str]:
    """Sections 1 to 3."""
    lines = [
        "",
        "1-2. Landing an XML statement to file:// "
        "(own process each; RSS growth over RSS before the transfer)",
    ]
    lines.append(f"{'size MB':>8} {'client':<24} {'RSS growth MiB':>15} {'MB/s':>8} {'vs plain':>9}  outcome")
    plain = {row["size_mb"]: row for row in results["memory"] if row["client"] == "plain requests copy"}
    for row in results["memory"]:
        mbps = row["bytes"] / MB / row["seconds"] if row.get("seconds") and row.get("bytes") else None
        base = plain.get(row["size_mb"], {})
        base_mbps = base.get("bytes", 0) / MB / base["seconds"] if base.get("seconds") else None
        ratio = mbps / base_mbps if mbps and base_mbps else None
        lines.append(
            f"{_fmt(row['size_mb'], 0):>8} {row['client']:<24} {_fmt(row.get('rss_growth_mib')):>15} "
            f"{_fmt(mbps):>8} {_fmt(ratio, 2):>9}  {row.get('outcome')}"
        )
    if results.get("s3"):
        lines += ["", "2b. To S3 (moto server)"]
        for row in results["s3"]:
            mbps = row.get("bytes", 0) / MB / row["seconds"] if row.get("seconds") else None
            lines.append(
                f"{_fmt(row['size_mb'], 0):>8} {row['client']:<24} "
                f"{_fmt(row.get('rss_growth_mib')):>15} {_fmt(mbps):>8}"
            )
    lines += ["", f"3. Polling cost (time compressed x{results['time_scale']:g}; figures in real-time terms)"]
    lines.append(
        f"{'generation':>10} {'client':<28} {'requests':>8} {'1018s':>6} "
        f"{'latency after ready s':>22}  outcome"
    )
    for row in results["polling"]:
        lines.append(
            f"{_fmt(row['generation_s'], 0) + ' s':>10} {row['client']:<28} {row['requests']:>8} "
            f"{row['throttled_1018']:>6} {_fmt(row['latency_after_ready_s']):>22}  {row['outcome']}"
        )
    return lines


def scale_report(results: dict[str, Any]) -> list[str]:
    """Sections 4 and 5."""
    lines: list[str] = []
    scale_rows = results.get("trigger_scale") or []
    if scale_rows:
        lines += [
            "",
            f"4. Triggerer scale: {scale_rows[0].get('triggers')} triggers in one event loop, one token "
            "each, 4 polls each (tokens already known to the masker)",
            f"{'gc.freeze':>9} {'triggers':<34} {'CPU ms/poll':>11} {'p99 lag ms':>10} {'max lag ms':>10} "
            f"{'KiB/trigger':>11}  statuses",
        ]
        names = {"floor": "floor (sleeping triggers)", "peer": "peer (HttpSensorTrigger)", "ours": "ours"}
        for row in scale_rows:
            lines.append(
                f"{'yes' if row.get('gc_freeze') else 'no':>9} {names.get(row.get('kind', ''), '?'):<34} "
                f"{_fmt(row.get('cpu_ms_per_poll'), 2):>11} {_fmt(row.get('p99_lag_s', 0) * 1000):>10} "
                f"{_fmt(row.get('max_lag_s', 0) * 1000):>10} "
                f"{_fmt(row.get('peak_rss_growth_kib_per_trigger')):>11}  "
                f"{row.get('statuses') or row.get('outcome')}"
            )
    row = results.get("triggerer")
    if row:
        lines.append(
            f"ours with {row.get('triggers')} brand-new tokens: "
            f"max lag {_fmt(row.get('max_lag_s', 0) * 1000)} ms, "
            f"p99 lag {_fmt(row.get('p99_lag_s', 0) * 1000)} ms, "
            f"{_fmt(row.get('peak_rss_growth_kib_per_trigger'))} KiB per trigger, "
            f"{_fmt(row.get('cpu_ms_per_poll'), 2)} ms CPU per poll, "
            f"{row.get('throttled_1018')} x 1018, statuses {row.get('statuses')}"
        )
    row = results.get("distributed")
    if row:
        lines += [
            "",
            f"5. One token, {row['queries']} queries on CeleryExecutor (2 workers, 2 triggerers, budget in "
            f"Redis), statements ready {row['generation_s']:g} s after SendRequest, real time",
            f"run {row['state']}, {row['statements_served']} statements served, {row['requests']} requests, "
            f"{row['throttled_1018']} x 1018, min spacing {_fmt(row['min_spacing_s'], 2)} s, "
            f"max {row['max_per_60s']} per 60 s, wall {_fmt(row['wall_s'])} s vs ideal "
            f"{_fmt(row['ideal_s'])} s ({_fmt(row['vs_ideal'], 2)}x)",
        ]
    return lines


def tables_report(results: dict[str, Any]) -> list[str]:
    """Section 6."""
    lines: list[str] = []
    if results.get("tables"):
        lines += ["", "6. Converting an XML statement into typed tables (own process each)"]
        lines.append(
            f"{'size MB':>8} {'client':<30} {'RSS growth MiB':>15} {'MB/s':>8} {'rows/s':>9}  outcome"
        )
        for row in results["tables"]:
            seconds = row.get("seconds")
            lines.append(
                f"{_fmt(row['size_mb'], 0):>8} {row['client']:<30} {_fmt(row.get('rss_growth_mib')):>15} "
                f"{_fmt(row['size_mb'] / seconds if seconds else None):>8} "
                f"{_fmt(row.get('rows', 0) / seconds if seconds else None, 0):>9}  {row.get('outcome')}"
            )
    return lines


def delta_report(delta: dict[str, Any] | None) -> list[str]:
    """Section 7's lines."""
    if not delta:
        return []
    days = delta.get("daily") or []
    lines = [
        "",
        f"7. Statement history in Delta Lake: {len(days)} daily statements of {_fmt(delta['daily_mb'], 1)} "
        f"MB, then one of {_fmt(delta['large_mb'], 0)} MB",
    ]
    if days:
        seconds = [day["seconds"] for day in days]
        growth = (days[-1]["table_bytes"] - days[0]["table_bytes"]) / MB / max(len(days) - 1, 1)
        lines.append(
            f"per statement {_fmt(sum(seconds) / len(seconds), 2)} s on average (first "
            f"{_fmt(seconds[0], 2)} s, last {_fmt(seconds[-1], 2)} s); after {len(days)} days "
            f"{days[-1]['trade_rows']} trades, {_fmt(days[-1]['table_bytes'] / MB)} MB on disk "
            f"(+{_fmt(growth, 2)} MB a day)"
        )
    merge, parquet = delta.get("merge") or {}, delta.get("parquet") or {}
    rate = (merge.get("rows") or 0) / merge["seconds"] if merge.get("seconds") else None
    plain = (parquet.get("rows") or 0) / parquet["seconds"] if parquet.get("seconds") else None
    ratio = rate / plain if rate and plain else None
    lines.append(
        f"merging the {_fmt(delta['large_mb'], 0)} MB statement into them: RSS growth "
        f"{_fmt(merge.get('rss_growth_mib'))} MiB, {_fmt(rate, 0)} rows/s; the same statement to plain "
        f"Parquet: {_fmt(plain, 0)} rows/s (Delta at {_fmt(ratio, 2)}x)"
    )
    return lines


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each target of the benchmark issues: what it asks, what was measured, whether it is met (for the
    sections the results hold: an --only run holds one)."""
    found = []
    shared = results.get("distributed")
    if shared:
        found.append(
            (
                "one token on Celery: zero 1018s, wall <= 1.5x ideal",
                f"{shared.get('throttled_1018')} x 1018, {_fmt(shared.get('vs_ideal'), 2)}x",
                shared.get("state") == "success"
                and shared.get("throttled_1018") == 0
                and (shared.get("vs_ideal") or 99) <= 1.5,
            )
        )
    found += tables_targets(results.get("tables") or [])
    merge = (results.get("delta") or {}).get("merge") or {}
    if merge:
        merge_growth = merge.get("rss_growth_mib")
        found.append(
            (
                "Delta: RSS growth <= 512 MiB merging the large statement into 30 days",
                f"{_fmt(merge_growth)} MiB",
                merge_growth is not None and merge_growth <= 512,
            )
        )
    if results.get("memory") and results.get("polling"):
        found += landing_targets(results)
    return [*found, *scale_targets(results.get("trigger_scale") or [])]


def landing_targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Sections 1 to 3: memory and throughput landing a statement, and the polling cost."""
    memory = [row for row in results["memory"] if row["client"] == "provider (Hook)"]
    growth = max(row["rss_growth_mib"] for row in memory)
    largest = max(row["size_mb"] for row in memory)

    def rate(client: str) -> float:
        (row,) = [r for r in results["memory"] if r["client"] == client and r["size_mb"] == largest]
        return float(row["bytes"]) / row["seconds"] if row.get("seconds") else 0.0

    ratio = rate("provider (Hook)") / max(rate("plain requests copy"), 1e-9)
    ours = [row for row in results["polling"] if row["client"].startswith("provider")]
    longest = max(ours, key=lambda row: row["generation_s"])
    latency_ok = all(
        row["latency_after_ready_s"] is not None
        and row["latency_after_ready_s"] <= max(120.0, 0.2 * row["generation_s"])
        for row in ours
    )
    return [
        ("RSS growth <= 32 MiB at every size", f"{growth:.1f} MiB", growth <= 32),
        (f"throughput >= 0.9x plain copy at {largest:g} MB", f"{ratio:.2f}x", ratio >= 0.9),
        (
            "zero 1018s",
            f"{sum(row['throttled_1018'] for row in ours)}",
            all(r["throttled_1018"] == 0 for r in ours),
        ),
        (
            f"<= 12 requests for {longest['generation_s']:g} s",
            f"{longest['requests']}",
            longest["requests"] <= 12,
        ),
        ("latency after ready <= max(poll cap, 20% of wait)", "see table", latency_ok),
    ]


def scale_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """Ours against the peer in the same run, with and without gc.freeze() (none without a run)."""
    found = []
    for freeze in (False, True):
        by_kind = {row.get("kind"): row for row in rows if row.get("gc_freeze") == freeze}
        ours, peer = by_kind.get("ours") or {}, by_kind.get("peer") or {}
        if not ours:
            continue
        mode = "with gc.freeze()" if freeze else "without gc.freeze()"
        for key, label, limit in (
            ("cpu_ms_per_poll", "CPU per poll", 1.5),
            ("p99_lag_s", "p99 loop lag", 3.0),
            ("max_lag_s", "max loop lag", 1.2),
        ):
            mine, theirs = ours.get(key), peer.get(key)
            ratio = mine / theirs if mine is not None and theirs else None
            found.append(
                (
                    f"{label} <= {limit:g}x the peer's, {mode}",
                    f"{_fmt(ratio, 2)}x",
                    ratio is not None and ratio <= limit,
                )
            )
        kib = ours.get("peak_rss_growth_kib_per_trigger")
        found.append((f"< 50 KiB per trigger, {mode}", f"{_fmt(kib)} KiB", kib is not None and kib < 50))
    return found


def tables_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """The converter's targets: flat memory, and at least 3x the faster anchor's rows per second."""
    if not rows:
        return []
    ours = rows[0]

    def speed(row: dict[str, Any]) -> float:
        ok = row.get("seconds") and row.get("outcome") in ("tables", "parsed")
        return float(row.get("rows", 0)) / row["seconds"] if ok else 0.0

    fastest = max(speed(row) for row in rows[1:])
    ratio = speed(ours) / fastest if fastest else None
    growth = ours.get("rss_growth_mib")
    return [
        (
            f"tables: RSS growth <= 64 MiB converting {ours['size_mb']:.0f} MB",
            f"{_fmt(growth)} MiB",
            growth is not None and growth <= 64,
        ),
        ("tables: rows/s >= 3x the faster anchor", f"{_fmt(ratio, 2)}x", ratio is not None and ratio >= 3),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the harness, not the speed")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--report", type=Path, help="print the table of an earlier run's JSON and stop")
    parser.add_argument(
        "--only", choices=["tables", "triggers", "delta"], help="run this benchmark alone (merged into --out)"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    if args.only:
        alone: dict[str, Any]
        with tempfile.TemporaryDirectory(prefix="ibflex-bench-") as tmp:
            if args.only == "tables":
                alone = {"tables": bench_tables(2 * MB if args.smoke else 1000 * MB, Path(tmp))}
            elif args.only == "delta":
                alone = {"delta": bench_delta_sized(args.smoke, Path(tmp))}
            else:
                alone = {
                    "trigger_scale": bench_trigger_scale(
                        20 if args.smoke else 1000, Path(tmp), poke_interval=0.5 if args.smoke else 5.0
                    )
                }
        merged = json.loads(args.out.read_text()) if args.out.exists() else {}
        merged.update(alone)
        args.out.write_text(json.dumps(merged, indent=2))
        print(report(alone))
        return 0
    sizes = [1 * MB] if args.smoke else [10 * MB, 100 * MB, 1000 * MB]
    scale = 200.0 if args.smoke else 20.0
    generations = [5.0] if args.smoke else [5.0, 60.0, 600.0]
    with tempfile.TemporaryDirectory(prefix="ibflex-bench-") as tmp:
        workdir = Path(tmp)
        results: dict[str, Any] = {
            "machine": machine(),
            "time_scale": scale,
            "memory": bench_memory(sizes, workdir),
            "s3": bench_s3(1 * MB if args.smoke else 200 * MB, workdir),
            "polling": bench_polling(generations, scale, workdir),
            "triggerer": bench_triggerer(
                20 if args.smoke else 1000,
                workdir,
                masker_warm=False,
                poke_interval=0.5 if args.smoke else 5.0,
            ),
            "trigger_scale": bench_trigger_scale(
                20 if args.smoke else 1000, workdir, poke_interval=0.5 if args.smoke else 5.0
            ),
            "distributed": bench_distributed(workdir, queries=3 if args.smoke else 10),
            "tables": bench_tables(2 * MB if args.smoke else 1000 * MB, workdir),
            "delta": bench_delta_sized(args.smoke, workdir),
        }
    args.out.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
