"""The converter end to end: statements from the simulator over real HTTP (or its generator), landed by
the Hook in real files or moto's S3, converted into real Parquet/CSV, and compared, attribute by
attribute, with an independent reading of the statement."""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
from airflow_provider_ibflex.simulator import FlexSimulator, GeneratedStatement, StatementShape
from airflow_provider_ibflex.tables import FlexTablesError, convert_statement
from airflow_provider_ibflex.tables import values as typing_
from airflow_provider_ibflex.tables.collect import (
    CARRIED_KINDS,
    ROW_NUMBER,
    SHA256,
    STATEMENT_COLUMNS,
    TableCollector,
)
from airflow_provider_ibflex.tables.xmlrows import read_xml
from tests.conftest import MotoS3, files_under, sha256_of

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def write_statement(path: Path, **shape: Any) -> Path:
    """A statement from the simulator's generator, written to ``path``."""
    statement = GeneratedStatement(StatementShape(**shape))
    with path.open("wb") as out:
        for chunk in statement.chunks():
            out.write(chunk)
    return path


def land(
    flex_simulator: FlexSimulator, make_conn: Callable[..., str], token: str, destination: str, **query: Any
) -> dict[str, Any]:
    """Land a statement through the Hook, over HTTP, as the sensor does; return its metadata."""
    flex_simulator.add_query("555", **query)
    hook = IBFlexHook(make_conn(token))
    reference = hook.send_request("555")
    result = hook.download_statement(reference.reference_code, destination, url=reference.url)
    assert result.landed and result.metadata
    return result.metadata


def expected_rows(statement: Path) -> dict[str, list[dict[str, str | None]]]:
    """An independent reading of an XML statement (the whole tree, fine for test sizes): each table's
    rows in document order as the attributes they were written with, plus what each row carries and
    its position among all the statement's rows."""
    tables: dict[str, list[dict[str, str | None]]] = {}
    number = 0
    sha = sha256_of(statement)
    for flex_statement in SafeET.parse(statement).getroot().iter("FlexStatement"):
        carried = {new: flex_statement.get(old) for old, new in STATEMENT_COLUMNS.items()}
        carried[SHA256] = sha
        for section in flex_statement:
            for element in section.iter():
                if element.attrib:
                    number += 1
                    name = section.tag if element.tag == section.tag else f"{section.tag}/{element.tag}"
                    row = {"section": section.tag, ROW_NUMBER: str(number), **carried, **element.attrib}
                    row.setdefault("accountId", flex_statement.get("accountId", ""))
                    tables.setdefault(name, []).append(row)
    return tables


def read_table(uri: str) -> pa.Table:
    """One file the converter wrote, as a plain reader opens it."""
    path = uri.removeprefix("file://")
    return pq.read_table(path) if path.endswith(".parquet") else pa_csv.read_csv(path)


def assert_same_value(name: str, text: str | None, kind: pa.DataType, got: Any, raw: str | None) -> None:
    """A converted value against the text it came from, parsed independently of the converter."""
    if text is None:  # absent
        assert got is None and raw is None, name
        return
    if pa.types.is_string(kind):
        assert got == text, name
        return
    if pa.types.is_integer(kind):  # the row number
        assert got == int(text), name
        return
    if text in typing_.NULL_SPELLINGS:
        assert got is None and raw is None, name
        return
    if got is None:  # did not fit its type: the text survives
        assert raw == text, name
        return
    if pa.types.is_decimal(kind):
        assert got == decimal.Decimal(text.replace(",", "")), name
    elif pa.types.is_boolean(kind):
        assert got == (text in ("Y", "Yes")), name
    else:
        found = typing_.temporal_format(text)
        assert found is not None, (name, text)
        moment = datetime.datetime.strptime(text, found.strptime)
        expected: Any = moment.date() if pa.types.is_date(kind) else moment
        expected = moment.time() if pa.types.is_time(kind) else expected
        assert got == expected, name


def expected_type(name: str) -> pa.DataType:
    """A column's type from its name alone, as the README states the rule."""
    if name.endswith(typing_.RAW_SUFFIX):
        return pa.string()
    if name == ROW_NUMBER:
        return pa.int64()
    kind = CARRIED_KINDS.get(name) or typing_.declared_kind(name)
    return {
        "string": pa.string(),
        "decimal": pa.decimal128(38, 10),
        "date": pa.date32(),
        "datetime": pa.timestamp("ms"),
        "time": pa.time32("ms"),
        "boolean": pa.bool_(),
    }[kind]


def assert_lossless(statement: Path, manifest: dict[str, Any]) -> None:
    """Every table has every row in document order, every row every attribute, each value equal to
    its text; every column has the type its name gives, every typed column its raw companion."""
    expected = expected_rows(statement)
    assert set(manifest["tables"]) == set(expected)
    for name, rows in expected.items():
        entry = manifest["tables"][name]
        table = read_table(entry["uri"])
        assert entry["rows"] == table.num_rows == len(rows), name
        names = {n for row in rows for n in row}
        assert set(table.column_names) - names <= {n + typing_.RAW_SUFFIX for n in names}, name
        assert names <= set(table.column_names), name
        assert [c["name"] for c in entry["columns"]] == table.column_names
        for field in table.schema:
            assert field.type == expected_type(field.name), (name, field.name)
            if field.type not in (pa.string(), pa.int64()):
                assert field.name + typing_.RAW_SUFFIX in table.column_names, (name, field.name)
        assert table.column(ROW_NUMBER).to_pylist() == [int(row[ROW_NUMBER]) for row in rows], name
        for index, row in enumerate(table.to_pylist()):
            for attribute, text in rows[index].items():
                kind = table.schema.field(attribute).type
                raw = row.get(attribute + typing_.RAW_SUFFIX)
                assert_same_value(attribute, text, kind, row[attribute], raw)


# -- the simulator's statements, landed over HTTP -------------------------------------------------


def test_full_statement_landed_over_http_loses_nothing(
    flex_simulator: FlexSimulator, make_conn: Callable[..., str], token: str, tmp_path: Path
) -> None:
    landed = tmp_path / "landing" / "statement.xml"
    metadata = land(
        flex_simulator, make_conn, token, f"file://{landed}", content="full", accounts=3, size=400_000
    )
    manifest = convert_statement(metadata["uri"], tmp_path / "tables", expected_sha256=metadata["sha256"])
    assert_lossless(landed, manifest)
    assert manifest["statements"]["check"] == "passed" and manifest["statements"]["found"] == 3
    assert manifest["statements"]["accounts"] == ["U1234567", "U2345678", "U3456789"]
    on_disk = json.loads((tmp_path / "tables/_manifests/statement.json").read_text())
    assert on_disk == manifest

    trades = read_table(manifest["tables"]["Trades/Trade"]["uri"])
    first = trades.slice(0, 1).to_pylist()[0]
    assert first["cusip"] == "037833100" and first["tradeID"].startswith("0000")  # identifiers: text
    assert trades.schema.field("ibNewField2027").type == pa.string()  # unknown attribute: text
    assert trades.schema.field("dateTime").type == pa.timestamp("ms")
    assert first["dateTime"] == datetime.datetime(2026, 11, 20, 9, 30, 15)
    assert trades.schema.field("isAPIOrder").type == pa.bool_()
    assert set(trades.column("accountId").to_pylist()) == {"U3456789"}

    nav = read_table(manifest["tables"]["ChangeInNAV"]["uri"]).to_pylist()
    assert [r["startingValue"] for r in nav] == [decimal.Decimal("1250000.50")] * 3  # "1,250,000.50"
    cash = read_table(manifest["tables"]["CashTransactions/CashTransaction"]["uri"]).to_pylist()
    assert [r["settleDate__raw"] for r in cash] == [None, "MULTI"] * 3  # a misfit survives
    assert "IBFutureSection/IBFutureRow" in manifest["tables"]  # an unknown section
    info = read_table(manifest["tables"]["AccountInformation"]["uri"]).to_pylist()
    assert [r["primaryEmail"] for r in info] == ["investor@example.com", None, None]  # optional


def test_tables_in_s3_from_a_statement_in_s3(
    flex_simulator: FlexSimulator,
    make_conn: Callable[..., str],
    token: str,
    moto_s3: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from airflow.sdk import ObjectStoragePath

    bucket = moto_s3.bucket("flex")
    # A connection id of its own: Airflow caches object stores by connection id, per process.
    conn_id = f"tables_s3_{moto_s3.port}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", moto_s3.connection())
    key = "statements/2026-11-20.xml"
    destination = ObjectStoragePath(f"s3://{bucket}/{key}", conn_id=conn_id)
    flex_simulator.add_query("555", content="full", accounts=2, size=200_000)
    hook = IBFlexHook(make_conn(token))
    reference = hook.send_request("555")
    result = hook.download_statement(reference.reference_code, destination, url=reference.url)
    assert result.landed and result.metadata
    source = ObjectStoragePath(result.metadata["uri"], conn_id=conn_id)
    tables = ObjectStoragePath(f"s3://{bucket}/tables", conn_id=conn_id)
    sha = result.metadata["sha256"]
    manifest = convert_statement(source, tables, output_format="csv", expected_sha256=sha)
    keys = moto_s3.keys(bucket)
    trades = f"tables/section=Trades/element=Trade/2026-11-20.{manifest['run']}.csv"
    assert "tables/_manifests/2026-11-20.json" in keys and trades in keys
    assert sorted(k for k in keys if k.endswith(".csv")) == sorted(
        entry["uri"].removeprefix(f"s3://{bucket}/") for entry in manifest["tables"].values()
    )
    assert not [k for k in keys if "/pending/" in k]  # the run's note is gone once published
    body = moto_s3.client.get_object(Bucket=bucket, Key=trades)
    local = tmp_path / "trades.csv"
    local.write_bytes(body["Body"].read())
    assert pa_csv.read_csv(local).num_rows == manifest["tables"]["Trades/Trade"]["rows"]


# -- date formats and CSV layouts -----------------------------------------------------------------


@pytest.mark.parametrize("date_format", ["yyyyMMdd", "yyyy-MM-dd", "MM/dd/yyyy", "MM/dd/yy", "dd-MMM-yy"])
@pytest.mark.parametrize("time_format", ["HHmmss", "HH:mm:ss"])
@pytest.mark.parametrize("separator", [";", ",", " ", ""])
def test_every_date_format_a_query_allows(
    tmp_path: Path, date_format: str, time_format: str, separator: str
) -> None:
    statement = write_statement(
        tmp_path / "s.xml",
        content="full",
        size=30_000,
        date_format=date_format,
        time_format=time_format,
        date_time_separator=separator,
    )
    manifest = convert_statement(statement, tmp_path / "t")
    assert_lossless(statement, manifest)
    trade = read_table(manifest["tables"]["Trades/Trade"]["uri"]).slice(0, 1).to_pylist()[0]
    assert trade["tradeDate"] == datetime.date(2026, 11, 20)
    assert trade["dateTime"] == datetime.datetime(2026, 11, 20, 9, 30, 15)
    assert trade["statementWhenGenerated"] == datetime.datetime(2026, 11, 23, 7, 15)


@pytest.mark.parametrize("layout", ["sections", "descriptors", "plain"])
def test_csv_statements_match_their_xml_twin(tmp_path: Path, layout: str) -> None:
    shape = {"content": "full", "accounts": 2, "size": 60_000, "date_format": "MM/dd/yy"}
    xml = convert_statement(write_statement(tmp_path / "s.xml", **shape), tmp_path / "x")
    csv = convert_statement(
        write_statement(tmp_path / "s.csv", format="csv", csv_layout=layout, **shape), tmp_path / "c"
    )
    xml_trades = read_table(xml["tables"]["Trades/Trade"]["uri"])
    if layout == "plain":  # the file names no sections: numbered, one per distinct header
        # Eight distinct headers: AccountInformation has two (the optional attribute).
        assert sorted(csv["tables"]) == [f"Section{n}" for n in range(1, 9)]
        with_trades = [e for e in csv["tables"].values() if "TradePrice" in str(e["columns"])]
        assert [e["section"] for e in with_trades] == ["Section7"]
        csv_trades = read_table(with_trades[0]["uri"])
        csv_trades = csv_trades.filter(pa.compute.equal(csv_trades["LevelOfDetail"], "EXECUTION"))
    else:
        assert set(csv["tables"]) == set(xml["tables"]) - {"IBFutureSection/IBFutureRow"} | {
            "IBFutureSection"
        }
        for name, entry in xml["tables"].items():
            if name != "Trades/Trade":  # the trades that fill the size: as many as fit, in each format
                assert csv["tables"].get(name, csv["tables"].get("IBFutureSection"))["rows"] == entry["rows"]
        csv_trades = read_table(csv["tables"]["Trades/Trade"]["uri"])
        assert csv["statements"]["accounts"] == xml["statements"]["accounts"]
    rows = min(csv_trades.num_rows, xml_trades.num_rows)
    csv_trades, xml_trades = csv_trades.slice(0, rows), xml_trades.slice(0, rows)
    assert csv_trades.schema.field("TradePrice").type == xml_trades.schema.field("tradePrice").type
    pairs = [("TradePrice", "tradePrice"), ("DateTime", "dateTime"), ("Cusip", "cusip")]
    pairs.append(("accountId", "accountId"))
    if layout != "plain":
        pairs.append(("statementWhenGenerated", "statementWhenGenerated"))
    for csv_name, xml_name in pairs:
        assert csv_trades.column(csv_name).to_pylist() == xml_trades.column(xml_name).to_pylist()


def test_csv_with_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    text = '"BOF","U1","q","1","20261120","20261120","20261123;071500"\r\n"BOA","U1"\r\n'
    text += '"BOS","CTRN","Cash Transactions"\r\n"ClientAccountID","Amount","Description"\r\n'
    text += '"U1","1,024.50","line one\r\nline two"\r\n"EOS","CTRN","1"\r\n"EOA","U1"\r\n"EOF"\r\n'
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    manifest = convert_statement(path, tmp_path / "t")
    rows = read_table(manifest["tables"]["CashTransactions/CashTransaction"]["uri"]).to_pylist()
    assert rows == [
        {
            "section": "CashTransactions",
            "rowNumber": 1,
            "ClientAccountID": "U1",
            "Amount": decimal.Decimal("1024.50"),
            "Amount__raw": None,
            "Description": "line one\r\nline two",
            "accountId": "U1",
            "statementFromDate": datetime.date(2026, 11, 20),
            "statementFromDate__raw": None,
            "statementToDate": datetime.date(2026, 11, 20),
            "statementToDate__raw": None,
            "statementPeriod": None,  # a CSV's BOF record has no period
            "statementWhenGenerated": datetime.datetime(2026, 11, 23, 7, 15),
            "statementWhenGenerated__raw": None,
            "statementSha256": sha256_of(path),
        }
    ]


# -- public parsers' samples ------------------------------------------------------------------------


def test_ibflex_samples_retyped(tmp_path: Path) -> None:
    statement = FIXTURES / "ibflex_samples.xml"
    manifest = convert_statement(statement, tmp_path / "t", name="samples")
    assert_lossless(statement, manifest)
    info = read_table(manifest["tables"]["AccountInformation"]["uri"]).to_pylist()[0]
    assert info["masterName"] == "Dewey Cheatham & Howe"
    assert info["accountCapabilities"] == "Portfolio Margin,IBPrime"
    assert (info["dateOpened"], info["dateFunded"], info["dateClosed"]) == (
        datetime.date(2009, 6, 25),
        datetime.date(2009, 7, 13),
        None,
    )
    assert info["statementWhenGenerated"] == datetime.datetime(2017, 5, 10, 16, 41, 37)
    trade = read_table(manifest["tables"]["Trades/Trade"]["uri"]).to_pylist()[0]
    assert trade["symbol"] == "VXX   110917C00005000"  # inner spaces kept
    assert trade["expiry"] == datetime.date(2011, 9, 17)
    assert trade["tradeTime"] == datetime.time(16, 20)
    assert trade["closePrice"] == decimal.Decimal("29.130974")
    assert trade["proceeds"] == decimal.Decimal("-0")
    assert (trade["exchange"], trade["exchOrderId"], trade["origOrderID"]) == ("--", "N/A", "0")
    assert trade["isAPIOrder"] is False and trade["orderTime"] is None
    eae = read_table(manifest["tables"]["OptionEAE"]["uri"]).to_pylist()[0]
    assert (eae["costBasis"], eae["mtmPnl"]) == (decimal.Decimal("21792.73"), decimal.Decimal("20620.00"))
    cash = read_table(manifest["tables"]["CashTransactions/CashTransaction"]["uri"]).to_pylist()[0]
    assert cash["dateTime"] == datetime.datetime(2015, 10, 6) and cash["amount"] == 27800
    assert cash["conid"] == "62049667" and cash["strike"] is None


# -- bounded memory: the spool ----------------------------------------------------------------------


def test_an_attribute_first_seen_in_a_later_batch_becomes_a_column(tmp_path: Path) -> None:
    rows = "".join(f'<Trade accountId="U1" tradePrice="{n}.5" />' for n in range(50))
    rows += '<Trade accountId="U1" tradePrice="7" fxRateToBase="1.1" brandNew="x" />'
    text = f'<FlexQueryResponse><FlexStatements count="1"><FlexStatement accountId="U1"><Trades>{rows}'
    text += "</Trades></FlexStatement></FlexStatements></FlexQueryResponse>"
    source = tmp_path / "s.xml"
    source.write_text(text)
    collector = TableCollector(str(tmp_path), flush_values=10)
    with source.open("rb") as handle:
        read_xml(handle, collector, read_size=64)
    collector.close()
    table = collector.tables[("Trades", "Trade")]
    assert len(table.spans) > 5  # spooled in many batches
    manifest = convert_statement(source, tmp_path / "t")
    assert_lossless(source, manifest)
    trades = read_table(manifest["tables"]["Trades/Trade"]["uri"])
    assert trades.column("brandNew").to_pylist() == [None] * 50 + ["x"]
    assert trades.schema.field("fxRateToBase").type == pa.decimal128(38, 10)  # the one decimal type


# -- bad input: a clear error, nothing written ------------------------------------------------------


def altered(tmp_path: Path, change: Callable[[bytes], bytes]) -> Path:
    source = write_statement(tmp_path / "s.xml", content="full", accounts=2, size=30_000)
    source.write_bytes(change(source.read_bytes()))
    return source


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.replace(b'count="2"', b'count="3"'), "declares 3 statements but 2 were found"),
        (lambda b: b[: len(b) // 2], "not well-formed XML"),
        (lambda b: b'<!DOCTYPE x [<!ENTITY a "b">]>' + b, "DTD"),
        (lambda b: b.replace(b"<Trades>", b"<Trades>surprise", 1), "text inside"),
        (lambda b: b"", "is empty"),
        (lambda b: b"<FlexStatementResponse><Status>Warn</Status></FlexStatementResponse>", "envelope"),
        (lambda b: b"<html><body>Service unavailable</body></html>", "not a Flex statement"),
    ],
    ids=["count", "truncated", "dtd", "text", "empty", "envelope", "html"],
)
def test_bad_statements_fail_clearly_and_write_nothing(
    tmp_path: Path, change: Callable[[bytes], bytes], message: str
) -> None:
    source = altered(tmp_path, change)
    with pytest.raises(FlexTablesError, match=message):
        convert_statement(source, tmp_path / "t")
    assert files_under(tmp_path / "t") == []


def test_a_statement_changed_since_it_landed_is_refused(tmp_path: Path) -> None:
    source = write_statement(tmp_path / "s.xml", content="full", size=30_000)
    with pytest.raises(FlexTablesError, match="not the statement that landed"):
        convert_statement(source, tmp_path / "t", expected_sha256="0" * 64)
    assert files_under(tmp_path / "t") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"BOS","TRNT","Trades"\n"A","B"\n"1"\n', "1 values under a header of 2 columns"),
        ('"BOS","TRNT","Trades"\n"A","A"\n', "names \\['A'\\] twice"),
        ('"BOS","TRNT","Trades"\n"A"\n"1"\n"EOS","TRNT","5"\n', "declares 5 rows but has 1"),
        ('"HEADER","TRNT","A"\n"DATA","CTRN","1"\n', "DATA record of section 'CTRN' before its HEADER"),
        ('"A","B"\n"1","2\n', "not valid CSV"),
    ],
    ids=["width", "duplicate", "count", "data-first", "quote"],
)
def test_bad_csv_fails_clearly_and_writes_nothing(tmp_path: Path, text: str, message: str) -> None:
    source = tmp_path / "s.csv"
    source.write_text(text)
    with pytest.raises(FlexTablesError, match=message):
        convert_statement(source, tmp_path / "t")
    assert files_under(tmp_path / "t") == []


def test_a_failed_write_removes_the_tables_already_written(tmp_path: Path) -> None:
    source = write_statement(tmp_path / "s.xml", content="full", size=30_000)
    destination = tmp_path / "t"
    # The manifests' folder is a file: the manifest cannot be written, after every table was.
    destination.mkdir()
    (destination / "_manifests").write_text("in the way")
    with pytest.raises(OSError):
        convert_statement(source, destination)
    assert files_under(destination) == ["_manifests"]


def test_unknown_output_format(tmp_path: Path) -> None:
    with pytest.raises(FlexTablesError, match="output_format must be one of"):
        convert_statement(tmp_path / "s.xml", tmp_path / "t", output_format="xlsx")


# -- what is new since the previous conversion ------------------------------------------------------


def test_changes_since_the_previous_manifest(tmp_path: Path) -> None:
    yesterday = write_statement(tmp_path / "2026-11-19.xml", content="full", size=20_000, extras=False)
    today = write_statement(tmp_path / "2026-11-20.xml", content="full", size=20_000)
    before = convert_statement(yesterday, tmp_path / "t")
    after = convert_statement(today, tmp_path / "t", previous_manifest=before)
    assert after["changes"]["new_sections"] == ["IBFutureSection"]
    # Raw companions are in every file, with or without misfits: only the attribute is new.
    assert after["changes"]["new_columns"] == {
        f"Trades/{element}": ["ibNewField2027"] for element in ("Trade", "Order", "Lot")
    }
    assert after["changes"]["retyped_columns"] == {}
