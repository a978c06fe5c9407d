"""Tables read the way users read them: many statements, days and queries under one destination, read
together with pyarrow's dataset, DuckDB and ``read_table``; names from the input kept out of paths;
and a statement's tables published as one set, with failures and kills injected at the commit, on
real files and on moto's S3."""

from __future__ import annotations

import datetime
import decimal
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from airflow_provider_ibflex.tables import FlexTablesError, convert_statement, manifests, read_table
from airflow_provider_ibflex.tables import values as typing_
from tests.conftest import MotoS3, files_under
from tests.tables_faults import POINTS, convert_with_fault
from tests.test_tables import assert_same_value

REPO = Path(__file__).resolve().parents[1]
Rows = dict[str, list[dict[str, str]]]


def statement_xml(
    rows: Rows, *, day: str = "20261120", account: str = "U1234567", query: str = "daily"
) -> str:
    """A Flex statement with the given rows (by ``Section/Element``, or ``Section`` for a section that
    is itself a row), one account, dated ``day``."""
    body = []
    for table, elements in rows.items():
        section, _, element = table.partition("/")
        lines = [
            f"<{element or section} " + " ".join(f'{k}="{v}"' for k, v in row.items()) + " />"
            for row in elements
        ]
        body.append(
            "\n".join(lines) if not element else f"<{section}>\n" + "\n".join(lines) + f"\n</{section}>"
        )
    attributes = f'accountId="{account}" fromDate="{day}" toDate="{day}" period="LastBusinessDay"'
    return (
        f'<FlexQueryResponse queryName="{query}" type="AF">\n<FlexStatements count="1">\n'
        f'<FlexStatement {attributes} whenGenerated="{day};083000">\n'
        + "\n".join(body)
        + "\n</FlexStatement>\n</FlexStatements>\n</FlexQueryResponse>\n"
    )


def trade(transaction: str, day: str, net_cash: str, **more: str) -> dict[str, str]:
    return {
        "accountId": "U1234567",
        "currency": "USD",
        "symbol": "AAPL",
        "tradeDate": day,
        "dateTime": f"{day};093015",
        "quantity": "10",
        "tradePrice": "10.5",
        "netCash": net_cash,
        "transactionID": transaction,
        "isAPIOrder": "N",
        **more,
    }


def cash(day: str, starting: str, ending: str) -> dict[str, str]:
    return {
        "accountId": "U1234567",
        "currency": "USD",
        "fromDate": day,
        "startingCash": starting,
        "endingCash": ending,
    }


# One query, five days: the same attributes every day, values of every scale the fixed type holds,
# one it does not, and a date written MULTI on one day only.
DAILY: dict[str, Rows] = {
    "20261116": {
        "CashReport/CashReportCurrency": [cash("20261116", "79362.354191008", "150000.50")],
        "Trades/Trade": [trade("1", "20261116", "-100")],
    },
    "20261117": {
        "CashReport/CashReportCurrency": [cash("20261117", "150000.50", "150001")],
        "Trades/Trade": [trade("2", "20261117", "-100.25"), trade("3", "20261117", "1,234,567.5")],
    },
    "20261118": {
        "CashReport/CashReportCurrency": [cash("20261118", "150001", "0.1234567891")],
        "Trades/Trade": [trade("4", "20261118", "79362.354191008")],
    },
    "20261119": {
        "CashReport/CashReportCurrency": [cash("20261119", "0.1234567891", "2.00000000000000")],
        "Trades/Trade": [trade("5", "20261119", "0.1234567891"), trade("6", "20261119", "0.12345678901")],
    },
    "20261120": {
        "CashReport/CashReportCurrency": [cash("20261120", "2", "-0")],
        "Trades/Trade": [trade("7", "20261120", "5", tradeDate="MULTI")],
    },
}
# Another query into the same destination: other attributes (cusip, no isAPIOrder), another section,
# and, on its second day, an attribute no catalogue knows yet.
OTHER: dict[str, Rows] = {
    "20261119": {
        "Trades/Trade": [
            {
                k: v
                for k, v in trade("101", "20261119", "-7.5", cusip="037833100").items()
                if k != "isAPIOrder"
            }
        ],
        "OpenPositions/OpenPosition": [
            {"accountId": "U1234567", "symbol": "AAPL", "position": "100", "markPrice": "231.5"}
        ],
    },
    "20261120": {
        "Trades/Trade": [
            {
                k: v
                for k, v in trade(
                    "102", "20261120", "-8.123456789", cusip="037833100", ibNewField2030="x"
                ).items()
                if k != "isAPIOrder"
            }
        ],
    },
}


def convert_days(
    tmp_path: Path, destination: Path, query: str, days: dict[str, Rows]
) -> list[dict[str, Any]]:
    done = []
    for day, rows in days.items():
        source = tmp_path / "landed" / query / f"{day}.xml"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(statement_xml(rows, day=day, query=query))
        done.append(convert_statement(source, destination, name=f"{day}-{query}"))
    return done


def expected_trades(*queries: dict[str, Rows]) -> dict[str, dict[str, str]]:
    """Each trade's attributes as written, by transactionID."""
    return {
        row["transactionID"]: row
        for days in queries
        for rows in days.values()
        for row in rows["Trades/Trade"]
    }


def assert_exact(rows: list[dict[str, Any]], expected: dict[str, dict[str, str]], schema: pa.Schema) -> None:
    """Every expected row came back once, every attribute exactly (typed, or null with its raw text)."""
    assert sorted(row["transactionID"] for row in rows) == sorted(expected)
    for row in rows:
        written = expected[row["transactionID"]]
        for name, text in written.items():
            assert name in row, name
            assert_same_value(
                name, text, schema.field(name).type, row[name], row.get(name + typing_.RAW_SUFFIX)
            )
        for name in set(row) - set(written):  # what the row does not have is null, never invented
            if (
                name in schema.names
                and not name.endswith(typing_.RAW_SUFFIX)
                and name in {n for w in expected.values() for n in w}
            ):
                assert row[name] is None, name


def trade_files(destination: Path) -> list[str]:
    return sorted(str(p) for p in (destination / "section=Trades" / "element=Trade").glob("*.parquet"))


# -- one query, many days -------------------------------------------------------------------------------


def test_one_query_over_days_reads_back_exactly_with_every_tool(tmp_path: Path) -> None:
    destination = tmp_path / "tables"
    convert_days(tmp_path, destination, "daily", DAILY)
    files = trade_files(destination)
    assert len(files) == 5
    schemas = [pq.read_schema(f) for f in files]
    assert all(schema == schemas[0] for schema in schemas)  # one schema, whatever each day's values
    assert schemas[0].field("netCash").type == pa.decimal128(38, 10)
    expected = expected_trades(DAILY)

    # pyarrow, default discovery (the schema of the first file)
    table = ds.dataset(str(destination / "section=Trades" / "element=Trade")).to_table()
    assert_exact(table.to_pylist(), expected, table.schema)
    # DuckDB over the folder's files
    relation = duckdb.sql(
        f"SELECT * FROM read_parquet('{destination}/section=Trades/element=Trade/*.parquet')"
    )
    assert_exact(
        [dict(zip(relation.columns, r, strict=True)) for r in relation.fetchall()], expected, table.schema
    )
    # the reader, through the manifests
    read = read_table(destination, "Trades/Trade")
    assert_exact(read.to_pylist(), expected, read.schema)

    by_id = {row["transactionID"]: row for row in read.to_pylist()}
    assert by_id["1"]["netCash"] == decimal.Decimal("-100") and by_id["2"]["netCash"] == decimal.Decimal(
        "-100.25"
    )
    assert by_id["6"]["netCash"] is None and by_id["6"]["netCash__raw"] == "0.12345678901"  # never rounded
    assert by_id["7"]["tradeDate"] is None and by_id["7"]["tradeDate__raw"] == "MULTI"
    cash_rows = read_table(destination, "CashReport/CashReportCurrency").to_pylist()
    assert [r["endingCash"] for r in cash_rows] == [
        decimal.Decimal(v) for v in ("150000.50", "150001", "0.1234567891", "2", "0")
    ]
    assert cash_rows[0]["startingCash"] == decimal.Decimal("79362.354191008")
    # Sums in SQL are exact too.
    total = duckdb.sql(
        f"SELECT sum(endingCash) FROM read_parquet('{destination}/section=CashReport/element=*/*.parquet')"
    ).fetchall()
    assert total == [(decimal.Decimal("300003.6234567891"),)]


def test_rows_keep_document_order_and_the_statement_its_attributes(tmp_path: Path) -> None:
    rows = {"Trades/Trade": [trade(str(n), "20261120", "1") for n in range(1, 6)]}
    for row in rows["Trades/Trade"][1::2]:  # rows 2 and 4 carry one more attribute
        row["fxRateToBase"] = "1"
    source = tmp_path / "s.xml"
    source.write_text(statement_xml(rows))
    manifest = convert_statement(source, tmp_path / "t")
    table = read_table(tmp_path / "t", "Trades/Trade")
    assert table.column("transactionID").to_pylist() == ["1", "2", "3", "4", "5"]
    assert table.column("rowNumber").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("statementPeriod").to_pylist() == ["LastBusinessDay"] * 5
    assert manifest["statements"]["periods"] == [
        {
            "accountId": "U1234567",
            "fromDate": "20261120",
            "toDate": "20261120",
            "period": "LastBusinessDay",
            "whenGenerated": "20261120;083000",
        }
    ]
    assert manifest["response"] == {
        "FlexQueryResponse": {"queryName": "daily", "type": "AF"},
        "FlexStatements": {"count": "1"},
    }
    # The catalogue's order, then what it does not list; each typed column beside its raw text.
    names = table.column_names
    assert names[:2] == ["section", "rowNumber"]
    assert names.index("accountId") < names.index("currency") < names.index("fxRateToBase__raw")
    assert names[-8:] == [
        "statementFromDate",
        "statementFromDate__raw",
        "statementToDate",
        "statementToDate__raw",
        "statementPeriod",
        "statementWhenGenerated",
        "statementWhenGenerated__raw",
        "statementSha256",
    ]


# -- several queries, one destination ---------------------------------------------------------------------


def test_several_queries_in_one_destination_unify_and_read_back_exactly(tmp_path: Path) -> None:
    destination = tmp_path / "tables"
    convert_days(tmp_path, destination, "daily", DAILY)
    convert_days(tmp_path, destination, "other", OTHER)
    files = trade_files(destination)
    assert len(files) == 7
    unified = pa.unify_schemas([pq.read_schema(f) for f in files])  # one type per name: it unifies
    assert unified.field("ibNewField2030").type == pa.string()
    expected = expected_trades(DAILY, OTHER)

    table = ds.dataset(files, schema=unified).to_table()
    assert_exact(table.to_pylist(), expected, unified)
    glob = f"{destination}/section=Trades/element=Trade/*.parquet"
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', union_by_name = true)")
    assert_exact(
        [dict(zip(relation.columns, r, strict=True)) for r in relation.fetchall()], expected, unified
    )
    read = read_table(destination, "Trades/Trade")
    assert_exact(read.to_pylist(), expected, read.schema)
    assert {row["transactionID"]: row["ibNewField2030"] for row in read.to_pylist()}["102"] == "x"

    only = read_table(
        destination, "Trades/Trade", names=["20261120-other"], columns=["transactionID", "cusip"]
    )
    assert only.to_pylist() == [{"transactionID": "102", "cusip": "037833100"}]
    filtered = read_table(destination, "Trades/Trade", filter=ds.field("transactionID") == "4")
    assert filtered.column("netCash").to_pylist() == [decimal.Decimal("79362.354191008")]
    assert isinstance(read_table(destination, "OpenPositions/OpenPosition", as_dataset=True), ds.Dataset)
    assert list(manifests(destination)) == sorted(
        f"{d}-{q}" for q, days in (("daily", DAILY), ("other", OTHER)) for d in days
    )
    with pytest.raises(FlexTablesError, match=r"has the table 'Trades/Nothing'.*OpenPositions/OpenPosition"):
        read_table(destination, "Trades/Nothing")


def test_csv_output_reads_back_typed_through_the_reader(tmp_path: Path) -> None:
    source = tmp_path / "s.xml"
    source.write_text(statement_xml(DAILY["20261119"]))
    convert_statement(source, tmp_path / "t", output_format="csv")
    table = read_table(tmp_path / "t", "Trades/Trade")
    assert_exact(table.to_pylist(), expected_trades({"d": DAILY["20261119"]}), table.schema)
    assert table.schema.field("netCash").type == pa.decimal128(38, 10)


# -- names from the input never become paths unchecked ---------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        (
            '<FlexQueryResponse><FlexStatements count="1"><FlexStatement accountId="U1">'
            '<x:Trades xmlns:x="/../../../ESCAPED"><x:Trade a="1"/></x:Trades>'
            "</FlexStatement></FlexStatements></FlexQueryResponse>",
            "xml",
            "element 'Trades' in the XML namespace '/../../../ESCAPED'",
        ),
        (
            '<FlexQueryResponse><FlexStatements count="1"><FlexStatement accountId="U1">'
            '<Trades><Trade.x a="1"/></Trades></FlexStatement></FlexStatements></FlexQueryResponse>',
            "xml",
            "row element named 'Trade.x'",
        ),
        (
            '"BOS","../../../../../../ESCAPED",""\n"A"\n"1"\n',
            "csv",
            "CSV section code named '../../../../../../ESCAPED'",
        ),
        ('"BOS","XYZ","1099 Info"\n"A"\n"1"\n', "csv", "label \\('1099 Info' gives\\) named '1099Info'"),
        ('"HEADER","../x","A"\n"DATA","../x","1"\n', "csv", "CSV section code named '../x'"),
    ],
    ids=["xml-namespace", "xml-dotted", "csv-code", "csv-label-digit", "csv-descriptor"],
)
def test_names_that_are_not_plain_are_refused_and_nothing_is_written(
    tmp_path: Path, text: str, suffix: str, message: str
) -> None:
    source = tmp_path / "in" / f"s.{suffix}"
    source.parent.mkdir()
    source.write_text(text)
    destination = tmp_path / "deep" / "a" / "b" / "c" / "tables"
    before = snapshot(tmp_path)
    with pytest.raises(FlexTablesError, match=message):
        convert_statement(source, destination)
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.rglob("*ESCAPED*"))


def test_a_csv_label_is_text_and_only_its_letters_and_digits_name_a_table(tmp_path: Path) -> None:
    """A BOS label is free text ("Forex P/L Details"): only its letters and digits name the table, so
    dots and slashes never reach a path, and the table stays inside the destination."""
    source = tmp_path / "s.csv"
    source.write_text('"BOS","XYZ","../../ESCAPED"\n"A"\n"1"\n')
    manifest = convert_statement(source, tmp_path / "t")
    assert list(manifest["tables"]) == ["ESCAPED"]
    assert all(
        path.startswith("t/") for path in [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*ESCAPED*")]
    )


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "_ignored", "..", "a\\b", "tab\there"])
def test_a_name_that_is_not_a_file_name_is_refused(tmp_path: Path, name: str) -> None:
    source = tmp_path / "s.xml"
    source.write_text(statement_xml(DAILY["20261116"]))
    with pytest.raises(FlexTablesError, match=r"name .* give a plain file name"):
        convert_statement(source, tmp_path / "t", name=name)
    assert files_under(tmp_path / "t") == []


# -- a statement's tables published as one set ----------------------------------------------------------


def published_files(destination: Path) -> list[str]:
    """Every file the published manifests list, and the manifests themselves, relative."""
    listed = [f"_manifests/{name}.json" for name in manifests(destination)]
    for manifest in manifests(destination).values():
        listed += [
            entry["uri"].removeprefix(f"file://{destination}/") for entry in manifest["tables"].values()
        ]
    return sorted(listed)


def test_a_rerun_replaces_its_set_and_removes_tables_of_sections_gone(tmp_path: Path) -> None:
    destination = tmp_path / "t"
    full = tmp_path / "full.xml"
    full.write_text(statement_xml({**DAILY["20261116"], **OTHER["20261119"]}))
    first = convert_statement(full, destination, name="day")
    assert len(first["tables"]) == 3
    small = tmp_path / "small.xml"
    small.write_text(statement_xml({"Trades/Trade": DAILY["20261117"]["Trades/Trade"]}))
    second = convert_statement(small, destination, name="day")
    assert list(second["tables"]) == ["Trades/Trade"]
    assert files_under(destination) == published_files(destination)  # nothing stale, no note left
    assert read_table(destination, "Trades/Trade").column("transactionID").to_pylist() == ["2", "3"]


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    """A new bucket (moto keeps its buckets for the whole process)."""
    import uuid

    return moto_s3.bucket(f"tables-{uuid.uuid4().hex[:12]}")


@pytest.mark.parametrize("action", ["raise", "kill"])
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("store", ["file", "s3"])
def test_a_publish_that_fails_or_is_killed_keeps_a_whole_set_and_the_next_run_cleans_up(
    tmp_path: Path, request: pytest.FixtureRequest, store: str, point: str, action: str
) -> None:
    before = tmp_path / "before.xml"
    before.write_text(statement_xml({**DAILY["20261116"], **OTHER["20261119"]}))  # three tables
    after = tmp_path / "after.xml"
    after.write_text(statement_xml({"Trades/Trade": DAILY["20261117"]["Trades/Trade"]}))  # one
    if store == "s3":
        moto: MotoS3 = request.getfixturevalue("moto_s3")
        name = request.getfixturevalue("bucket")
        from s3fs import S3FileSystem

        fs = S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=moto.endpoint,
            client_kwargs={"region_name": moto.REGION},
            skip_instance_cache=True,
        )
        spec = {"destination": f"{name}/t", "endpoint": moto.endpoint}

        def target() -> Any:
            from types import SimpleNamespace

            fs.invalidate_cache()
            return SimpleNamespace(fs=fs, path=f"{name}/t")

        def listing() -> list[str]:
            return sorted(k.removeprefix("t/") for k in moto.keys(name))
    else:
        root = tmp_path / "t"
        spec = {"destination": str(root)}

        def target() -> Any:
            return root

        def listing() -> list[str]:
            return files_under(root)

    convert_statement(before, target(), name="day")
    published_before = listing()
    trades_before = read_table(target(), "Trades/Trade").to_pylist()
    spec.update(source=str(after), name="day", point=point, action=action)
    if action == "kill":
        done = subprocess.run(
            [sys.executable, "-m", "tests.tables_faults", json.dumps(spec)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert done.returncode == -9, done.stderr[-2000:]
    elif point == "before-commit":
        with pytest.raises(OSError, match="injected fault"):
            convert_with_fault(spec)
    else:
        convert_with_fault(spec)  # published; removing the old set failed, which is only logged

    current = manifests(target())["day"]
    published = [entry["uri"] for entry in current["tables"].values()]
    if point == "before-commit":
        # The previous set is still the published one, whole and readable.
        assert len(published) == 3
        assert read_table(target(), "Trades/Trade").to_pylist() == trades_before
        if action == "raise":
            assert listing() == published_before  # the failed run removed what it wrote
    else:
        assert list(current["tables"]) == ["Trades/Trade"]
        assert read_table(target(), "Trades/Trade").column("transactionID").to_pylist() == ["2", "3"]
    # The next run of the name publishes and leaves exactly its set: no stale table, file or note.
    final = convert_statement(after, target(), name="day")
    files = listing()
    uris = sorted(e["uri"].rsplit("/t/", 1)[1] for e in final["tables"].values())
    assert files == sorted(["_manifests/day.json", *uris])
    assert read_table(target(), "Trades/Trade").column("transactionID").to_pylist() == ["2", "3"]


# -- the README's ways to read, as written -------------------------------------------------------------------


def test_readme_reading_examples_run_as_written(tmp_path: Path) -> None:
    destination = tmp_path / "tables"
    convert_days(tmp_path, destination, "daily", DAILY)
    convert_days(tmp_path, destination, "other", OTHER)
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- tables-read -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "the README's block of ways to read the tables is missing"
    scope: dict[str, Any] = {"TABLES": str(destination)}
    exec(block.group(1), scope)  # noqa: S102 - the README's own example
    assert scope["trades"].num_rows == 9
    assert scope["everything"].num_rows == 9
    assert sorted(scope["cash"]) == sorted(
        decimal.Decimal(v) for v in ("150000.50", "150001", "0.1234567891", "2", "0")
    )
    assert scope["one_day"].num_rows == 1
    assert len(scope["by_query"]) == 9
    assert scope["unified"].field("ibNewField2030").type == pa.string()
    assert isinstance(scope["positions"], list) and scope["positions"][0][1] == decimal.Decimal("100")
    assert datetime.date(2026, 11, 16) in {row["tradeDate"] for row in scope["trades"].to_pylist()}
