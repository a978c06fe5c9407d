"""Statements into Delta Lake tables: a week of overlapping "last 7 days" statements in any order, reruns,
two accounts, two conversions at once, a failure between tables and its retry, an attribute that
appears later, S3 (moto), maintenance and time travel; read back with deltalake and pyarrow."""

from __future__ import annotations

import datetime
import decimal
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from airflow_provider_ibflex.tables import FlexTablesError, convert_statement, read_table
from tests.conftest import MotoS3
from tests.test_tables_read import statement_xml

REPO = Path(__file__).resolve().parents[1]
START = datetime.date(2026, 11, 1)


def day(n: int) -> datetime.date:
    return START + datetime.timedelta(days=n - 1)


def ymd(date: datetime.date) -> str:
    return date.strftime("%Y%m%d")


def weekly_statement(n: int, account: str = "U1234567", extra: dict[str, str] | None = None) -> str:
    """Day ``n``'s "last 7 days" statement: one trade per day of its window (the same trade, the same
    transactionID, in every statement that covers its day; its notes say which statement wrote it),
    the window's cash report and the positions at its end."""
    first = max(n - 6, 1)
    trades = [
        {
            "accountId": account,
            "symbol": "AAPL",
            "tradeDate": ymd(day(d)),
            "quantity": str(d),
            "netCash": f"-{d}00.25",
            "transactionID": f"{account}-{d}",
            "notes": f"as of day {n}",
            **(extra or {}),
        }
        for d in range(first, n + 1)
    ]
    cash = [{"accountId": account, "currency": "USD", "endingCash": f"{1000 + n}.5"}]
    positions = [{"accountId": account, "symbol": "AAPL", "reportDate": ymd(day(n)), "position": str(n)}]
    rows = {
        "Trades/Trade": trades,
        "CashReport/CashReportCurrency": cash,
        "OpenPositions/OpenPosition": positions,
    }
    text = statement_xml(rows, day=ymd(day(n)), account=account)
    # The statement covers its seven days, and was generated the morning after its last.
    return text.replace(f'fromDate="{ymd(day(n))}"', f'fromDate="{ymd(day(first))}"').replace(
        f'whenGenerated="{ymd(day(n))};083000"', f'whenGenerated="{ymd(day(n + 1))};083000"'
    )


def land(tmp_path: Path, n: int, file_name: str | None = None, **kwargs: Any) -> Path:
    path = tmp_path / "landed" / (file_name or f"{ymd(day(n))}.xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(weekly_statement(n, **kwargs))
    return path


def trades_of(location: Path | str, **options: Any) -> dict[str, dict[str, Any]]:
    table = DeltaTable(str(location), **options).to_pyarrow_table()
    rows = table.to_pylist()
    by_id = {row["transactionID"]: row for row in rows}
    assert len(by_id) == len(rows), "a trade is in the table twice"
    return by_id


def assert_each_trade_as_of_its_newest_statement(trades: dict[str, dict[str, Any]], days: int) -> None:
    assert sorted(trades) == sorted(f"U1234567-{d}" for d in range(1, days + 1))
    for d in range(1, days + 1):
        newest = min(d + 6, days)  # the last statement whose window holds day d
        row = trades[f"U1234567-{d}"]
        assert row["notes"] == f"as of day {newest}", row
        assert row["statementWhenGenerated"] == datetime.datetime.combine(
            day(newest + 1), datetime.time(8, 30)
        )
        assert row["netCash"] == decimal.Decimal(f"-{d}00.25") and row["statementSha256"]


@pytest.mark.parametrize("order", ["in order", "out of order"])
def test_a_week_of_overlapping_daily_statements_gives_each_trade_once_as_of_its_newest(
    tmp_path: Path, order: str
) -> None:
    days = list(range(1, 10))
    if order == "out of order":
        random.Random(7).shuffle(days)
    destination = tmp_path / "delta"
    for n in days:
        manifest = convert_statement(land(tmp_path, n), destination, output_format="delta", name=f"d{n}")
        assert manifest["tables"]["Trades/Trade"]["rule"] == {
            "kind": "key",
            "keys": ["transactionID"],
            "source": "catalogue",
        }
    assert_each_trade_as_of_its_newest_statement(trades_of(destination / "Trades" / "Trade"), 9)
    # Cash and positions have no trustworthy key: one set per (account, statement period).
    cash = DeltaTable(str(destination / "CashReport" / "CashReportCurrency")).to_pyarrow_table()
    assert sorted(cash.column("endingCash").to_pylist()) == [
        decimal.Decimal(f"{1000 + n}.5") for n in range(1, 10)
    ]
    # The reader gives the same table, and only some statements' rows when asked.
    assert read_table(destination, "Trades/Trade").num_rows == 9
    assert read_table(destination, "OpenPositions/OpenPosition", names=["d3"]).column(
        "position"
    ).to_pylist() == [decimal.Decimal(3)]


def test_a_rerun_of_any_day_changes_nothing(tmp_path: Path) -> None:
    destination = tmp_path / "delta"
    for n in range(1, 6):
        convert_statement(land(tmp_path, n), destination, output_format="delta", name=f"d{n}")

    def content() -> dict[str, list[dict[str, Any]]]:
        tables = {}
        for path in sorted(log.parent for log in destination.glob("*/*/_delta_log")):
            rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
            tables[f"{path.parent.name}/{path.name}"] = sorted(rows, key=json.dumps_default)
        return tables

    before = content()
    for n in (3, 1, 5):
        again = convert_statement(land(tmp_path, n), destination, output_format="delta", name=f"d{n}")
        assert again["tables"]["Trades/Trade"]["version"] is not None
        assert content() == before, f"rerunning day {n} changed a table"


json.dumps_default = lambda row: json.dumps(row, sort_keys=True, default=str)  # type: ignore[attr-defined]


def test_two_accounts_in_one_statement_and_in_the_same_tables(tmp_path: Path) -> None:
    destination = tmp_path / "delta"
    one = weekly_statement(3, account="U1111111")
    other = weekly_statement(3, account="U2222222")
    statements = one.split('<FlexStatements count="1">\n', 1)[1].split("</FlexStatements>")[0]
    statements += other.split('<FlexStatements count="1">\n', 1)[1].split("</FlexStatements>")[0]
    both = (
        one.split("<FlexStatements", 1)[0]
        + f'<FlexStatements count="2">\n{statements}</FlexStatements>\n</FlexQueryResponse>\n'
    )
    source = tmp_path / "both.xml"
    source.write_text(both)
    convert_statement(source, destination, output_format="delta", name="both")
    convert_statement(land(tmp_path, 4, account="U1111111"), destination, output_format="delta", name="one")
    trades = trades_of(destination / "Trades" / "Trade")
    assert sorted(trades) == sorted(
        [f"U1111111-{d}" for d in range(1, 5)] + [f"U2222222-{d}" for d in range(1, 4)]
    )
    cash = DeltaTable(str(destination / "CashReport" / "CashReportCurrency")).to_pyarrow_table().to_pylist()
    assert sorted((r["accountId"], r["endingCash"]) for r in cash) == [
        ("U1111111", decimal.Decimal("1003.5")),
        ("U1111111", decimal.Decimal("1004.5")),
        ("U2222222", decimal.Decimal("1003.5")),
    ]


def test_an_older_statement_of_the_same_period_changes_nothing(tmp_path: Path) -> None:
    """A statement regenerated later replaces its period; the older one, converted after it, does not
    take the period back."""
    destination = tmp_path / "delta"
    newer = land(tmp_path, 3).read_text().replace(";083000", ";183000").replace("1003.5", "1003.75")
    (tmp_path / "newer.xml").write_text(newer)
    convert_statement(tmp_path / "newer.xml", destination, output_format="delta", name="newer")
    convert_statement(land(tmp_path, 3), destination, output_format="delta", name="older")
    cash = DeltaTable(str(destination / "CashReport" / "CashReportCurrency")).to_pyarrow_table()
    assert cash.column("endingCash").to_pylist() == [decimal.Decimal("1003.75")]
    assert {row["notes"] for row in trades_of(destination / "Trades" / "Trade").values()} == {"as of day 3"}


def test_an_attribute_that_appears_on_day_five_is_added_without_rewriting_history(tmp_path: Path) -> None:
    destination = tmp_path / "delta"
    for n in range(1, 6):
        extra = {"cusip": "037833100", "ibNewField2030": "x"} if n == 5 else None
        convert_statement(land(tmp_path, n, extra=extra), destination, output_format="delta", name=f"d{n}")
    location = str(destination / "Trades" / "Trade")
    now = DeltaTable(location)
    assert {"cusip", "ibNewField2030"} <= set(now.to_pyarrow_table().column_names)
    trades = trades_of(location)
    # Day 5's statement covers days 1 to 5: every trade is now as it wrote it.
    assert {row["cusip"] for row in trades.values()} == {"037833100"}
    history = [entry["operation"] for entry in now.history()]
    assert "REPLACE TABLE" not in history and "WRITE" not in [h for h in history[:-1]]
    before = DeltaTable(location, version=now.version() - 1)
    assert "cusip" not in before.to_pyarrow_table().column_names, "history was rewritten"


def test_merge_keys_can_be_overridden_and_a_repeated_key_is_refused(tmp_path: Path) -> None:
    destination = tmp_path / "delta"
    manifest = convert_statement(
        land(tmp_path, 2), destination, output_format="delta", name="d2", merge_keys={"Trades/Trade": []}
    )
    assert manifest["tables"]["Trades/Trade"]["rule"]["kind"] == "period"
    with pytest.raises(FlexTablesError, match="merge_keys for Trades/Trade name \\['nope'\\]"):
        convert_statement(
            land(tmp_path, 3), destination, output_format="delta", merge_keys={"Trades/Trade": ["nope"]}
        )
    with pytest.raises(FlexTablesError, match="the key \\['symbol'\\] repeats within this statement"):
        convert_statement(
            land(tmp_path, 4),
            tmp_path / "other",
            output_format="delta",
            merge_keys={"Trades/Trade": ["symbol"]},
        )
    assert (
        not (tmp_path / "other" / "Trades").exists()
        or DeltaTable(str(tmp_path / "other" / "Trades" / "Trade")).to_pyarrow_table().num_rows == 0
    )


def test_times_of_day_are_text_in_delta(tmp_path: Path) -> None:
    fixture = REPO / "tests" / "fixtures" / "ibflex_samples.xml"
    convert_statement(fixture, tmp_path / "delta", output_format="delta")
    trade = DeltaTable(str(tmp_path / "delta" / "Trades" / "Trade")).to_pyarrow_table().to_pylist()[0]
    assert trade["tradeTime"] == "16:20:00" and trade["expiry"] == datetime.date(2011, 9, 17)


def test_a_failure_between_tables_is_completed_by_the_retry(tmp_path: Path) -> None:
    """A table that cannot be written stops the conversion after the tables before it committed;
    the manifest is not written. The retry writes every table, and each holds the statement once."""
    destination = tmp_path / "delta"
    convert_statement(land(tmp_path, 1), destination, output_format="delta", name="d1")
    blocker = destination / "Trades" / "Trade"
    moved = tmp_path / "moved"
    blocker.rename(moved)
    blocker.write_text("in the way")  # a file where the table is: the Trades table cannot be written
    with pytest.raises(Exception):
        convert_statement(land(tmp_path, 2), destination, output_format="delta", name="d2")
    assert not (destination / "_manifests" / "d2.json").exists()
    sha = json.loads((destination / "_manifests" / "d1.json").read_text())["source"]["sha256"]
    cash = DeltaTable(str(destination / "CashReport" / "CashReportCurrency")).to_pyarrow_table()
    assert len(set(cash.column("statementSha256").to_pylist()) - {sha}) == 1, "an earlier table has day 2"
    blocker.unlink()
    moved.rename(blocker)
    manifest = convert_statement(land(tmp_path, 2), destination, output_format="delta", name="d2")
    for name, entry in manifest["tables"].items():
        shas = set(DeltaTable(entry["uri"]).to_pyarrow_table().column("statementSha256").to_pylist())
        assert manifest["source"]["sha256"] in shas, name
    assert_each_trade_as_of_its_newest_statement(trades_of(blocker), 2)


CONVERTER = textwrap.dedent(
    """
    import sys
    from airflow_provider_ibflex.tables import convert_statement

    source, destination, name = sys.argv[1:]
    convert_statement(source, destination, output_format="delta", name=name)
    """
)


def test_two_conversions_at_once_lose_neither_statements_rows(tmp_path: Path) -> None:
    """Two processes merge different accounts' statements into the same tables at the same time: one
    commit loses the race, is retried, and both statements' rows are there."""
    destination = tmp_path / "delta"
    convert_statement(land(tmp_path, 1), destination, output_format="delta", name="first")  # tables exist
    sources = [land(tmp_path, 9, f"{account}.xml", account=account) for account in ("U7000001", "U7000002")]
    for _ in range(3):
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", CONVERTER, str(source), str(destination), source.stem], cwd=REPO
            )
            for source in sources
        ]
        assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
    trades = trades_of(destination / "Trades" / "Trade")
    for account in ("U7000001", "U7000002"):
        assert {f"{account}-{d}" for d in range(3, 10)} <= set(trades)
    cash = DeltaTable(str(destination / "CashReport" / "CashReportCurrency")).to_pyarrow_table()
    assert sorted(cash.column("accountId").to_pylist()) == ["U1234567", "U7000001", "U7000002"]


def test_delta_tables_on_s3(moto_s3_process: MotoS3, tmp_path: Path) -> None:
    """On moto's S3 (which honours conditional puts; in a process of its own, since delta-rs holds
    the GIL while it waits): the destination's filesystem gives delta-rs its credentials and
    endpoint; read back with deltalake and through the manifests."""
    moto_s3 = moto_s3_process
    from types import SimpleNamespace

    from s3fs import S3FileSystem

    bucket = moto_s3.bucket("delta-tables")
    fs = S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=moto_s3.endpoint,
        client_kwargs={"region_name": moto_s3.REGION},
        skip_instance_cache=True,
    )
    destination = SimpleNamespace(fs=fs, path=f"{bucket}/delta")
    for n in (1, 2, 3):
        manifest = convert_statement(land(tmp_path, n), destination, output_format="delta", name=f"d{n}")
    uri = manifest["tables"]["Trades/Trade"]["uri"]
    assert uri == f"s3://{bucket}/delta/Trades/Trade"
    options = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": moto_s3.REGION,
        "AWS_ENDPOINT_URL": moto_s3.endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    assert_each_trade_as_of_its_newest_statement(trades_of(uri, storage_options=options), 3)
    fs.invalidate_cache()
    assert read_table(destination, "Trades/Trade").num_rows == 3
    assert "delta/_manifests/d3.json" in [k.removeprefix("") for k in moto_s3.keys(bucket)] or any(
        k.endswith("_manifests/d3.json") for k in moto_s3.keys(bucket)
    )


def test_maintenance_compacts_and_vacuums_and_old_versions_stay_readable_until_then(tmp_path: Path) -> None:
    from airflow_provider_ibflex.operators.tables import IBFlexDeltaMaintenanceOperator

    destination = tmp_path / "delta"
    versions = {}
    for n in range(1, 6):
        manifest = convert_statement(land(tmp_path, n), destination, output_format="delta", name=f"d{n}")
        versions[n] = manifest["tables"]["Trades/Trade"]["version"]
    location = str(destination / "Trades" / "Trade")
    # Time travel: the table as of day 2's conversion.
    as_of_day_2 = DeltaTable(location, version=versions[2]).to_pyarrow_table()
    assert sorted(as_of_day_2.column("transactionID").to_pylist()) == ["U1234567-1", "U1234567-2"]
    files_before = len(DeltaTable(location).file_uris())
    done = IBFlexDeltaMaintenanceOperator(
        task_id="maintain", destination=f"file://{destination}", vacuum_retention=datetime.timedelta(0)
    ).execute({})  # type: ignore[arg-type]
    by_table = {entry["table"]: entry for entry in done}
    assert by_table["Trades/Trade"]["vacuumed_files"] > 0
    assert len(DeltaTable(location).file_uris()) <= files_before
    assert_each_trade_as_of_its_newest_statement(trades_of(location), 5)
    with pytest.raises(Exception):
        DeltaTable(location, version=versions[2]).to_pyarrow_table()


def test_table_assets_name_the_delta_table() -> None:
    from airflow_provider_ibflex.operators.tables import table_asset

    asset = table_asset("Trades/Trade", "s3://b/delta", output_format="delta")
    assert asset.uri == "s3://b/delta/Trades/Trade"
    assert table_asset("AccountInformation", "s3://b/delta", output_format="delta").uri.endswith(
        "/AccountInformation/AccountInformation"
    )
    assert pa.string()  # pyarrow is there for the converter


def test_readme_delta_examples_run_as_written(tmp_path: Path) -> None:
    import re

    destination = tmp_path / "delta"
    for n, name in ((1, "2026-11-19-123456"), (2, "2026-11-20-123456"), (3, "2026-11-21-123456")):
        convert_statement(land(tmp_path, n), destination, output_format="delta", name=name)
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- delta-read -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "the README's Delta example is missing"
    scope: dict[str, Any] = {"DELTA": str(destination)}
    exec(block.group(1), scope)  # noqa: S102 - the README's own example
    assert scope["trades"].num_rows == 3
    assert scope["latest"].num_rows == 3  # day 3's statement covers days 1 to 3
    assert scope["as_of_that_day"].num_rows == 2


def test_rows_without_a_key_are_matched_by_their_place_in_their_statement(tmp_path: Path) -> None:
    """A cash summary row has no transactionID: converting its statement again does not add it twice,
    and a newer statement for the same period replaces it."""
    destination = tmp_path / "delta"

    def statement(generated: str, summary: str, rows: int) -> Path:
        cash = [
            {"accountId": "U1", "currency": "USD", "amount": str(n), "transactionID": f"T{n}"}
            for n in range(rows)
        ]
        cash.append({"accountId": "U1", "currency": "USD", "amount": summary, "transactionID": ""})
        text = statement_xml({"CashTransactions/CashTransaction": cash}, account="U1").replace(
            ";083000", generated
        )
        path = tmp_path / f"cash-{generated.strip(';')}.xml"
        path.write_text(text)
        return path

    first = statement(";083000", "10.5", 2)
    for _ in range(2):
        convert_statement(first, destination, output_format="delta", name="cash")
    rows = (
        DeltaTable(str(destination / "CashTransactions" / "CashTransaction")).to_pyarrow_table().to_pylist()
    )
    assert sorted(r["transactionID"] for r in rows) == ["", "T0", "T1"]
    convert_statement(statement(";183000", "11.25", 3), destination, output_format="delta", name="cash")
    rows = (
        DeltaTable(str(destination / "CashTransactions" / "CashTransaction")).to_pyarrow_table().to_pylist()
    )
    assert sorted((r["transactionID"], r["amount"]) for r in rows) == [
        ("", decimal.Decimal("11.25")),
        ("T0", decimal.Decimal("0")),
        ("T1", decimal.Decimal("1")),
        ("T2", decimal.Decimal("2")),
    ]


def test_a_merge_reads_only_the_files_whose_keys_it_can_match(tmp_path: Path) -> None:
    """Every column has statistics (a Trade's key is its 41st), and the MERGE bounds the table's side
    by the statement's keys: a file of trades outside them is not read at all. Without both, each
    daily merge reads the table's whole history into memory."""
    destination = tmp_path / "delta"
    location = destination / "Trades" / "Trade"
    convert_statement(land(tmp_path, 1), destination, output_format="delta", name="d1")
    (first_day,) = DeltaTable(str(location)).file_uris()
    assert DeltaTable(str(location)).metadata().configuration["delta.dataSkippingNumIndexedCols"] == "-1"
    convert_statement(land(tmp_path, 20), destination, output_format="delta", name="d20")
    # Day 1's trade (U1234567-1) lies outside day 21's keys (U1234567-15 to -21): take its file away.
    hidden = tmp_path / "hidden.parquet"
    Path(first_day.removeprefix("file://")).rename(hidden)
    convert_statement(land(tmp_path, 21), destination, output_format="delta", name="d21")
    hidden.rename(first_day.removeprefix("file://"))
    trades = trades_of(location)
    assert sorted(trades) == sorted(f"U1234567-{d}" for d in [1, *range(14, 22)])
    assert (
        trades["U1234567-15"]["notes"] == "as of day 21" and trades["U1234567-14"]["notes"] == "as of day 20"
    )


def test_a_statements_key_bounds_cover_only_its_rows_with_a_key() -> None:
    from airflow_provider_ibflex.tables.delta import profile
    from airflow_provider_ibflex.tables.keys import Rule

    def batch(ids: list[str | None]) -> pa.RecordBatch:
        n = len(ids)
        return pa.record_batch(
            {
                "accountId": ["U1"] * n,
                "statementFromDate": [datetime.date(2026, 11, 1)] * n,
                "statementToDate": [datetime.date(2026, 11, 2)] * n,
                "statementWhenGenerated": [datetime.datetime(2026, 11, 3, 8, 30)] * n,
                "transactionID": pa.array(ids, pa.string()),
                "reportDate": [datetime.date(2026, 11, d) for d in range(1, n + 1)],
            }
        )

    found = profile(
        iter([batch(["5", None, "", "7"]), batch(["6", "40", None])]), Rule("key", ("transactionID",))
    )
    assert found.keyless == 3 and found.bounds == {"transactionID": ("40", "7")}
    assert found.within_bounds("t") == "t.\"transactionID\" >= '40' AND t.\"transactionID\" <= '7'"
    by_date = profile(iter([batch(["1", "2", "it's"])]), Rule("key", ("transactionID", "reportDate")))
    assert by_date.within_bounds("t") == (
        "t.\"transactionID\" >= '1' AND t.\"transactionID\" <= 'it''s' AND "
        "t.\"reportDate\" >= DATE '2026-11-01' AND t.\"reportDate\" <= DATE '2026-11-03'"
    )
    assert profile(iter([batch([None, ""])]), Rule("key", ("transactionID",))).within_bounds("t") == ""
