"""Unit tests of the converter's pure parts: typing values, deciding columns, manifests, layout."""

from __future__ import annotations

import datetime
import decimal
import itertools

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_ibflex.tables import values
from airflow_provider_ibflex.tables.layout import manifest_path, split_table_name, table_folder
from airflow_provider_ibflex.tables.manifest import changes_since, table_entry

MOMENT = datetime.datetime(2016, 2, 29, 14, 35, 29)
DATES = {
    "yyyyMMdd": "20160229",
    "yyyy-MM-dd": "2016-02-29",
    "MM/dd/yyyy": "02/29/2016",
    "MM/dd/yy": "02/29/16",
    "dd-MMM-yy": "29-Feb-16",
}
TIMES = {"HHmmss": "143529", "HH:mm:ss": "14:35:29"}


def typed(name: str, texts: list[str | None]) -> tuple[values.ColumnPlan, list[object], list[object] | None]:
    """One batch converted: the plan (from the name alone), the typed values and the raw companion's."""
    array = pa.array(texts, pa.string())
    plan = values.plan_column(name)
    column, raw = values.convert(plan, array)
    assert column.type == plan.type
    return plan, column.to_pylist(), None if raw is None else raw.to_pylist()


@pytest.mark.parametrize(
    ("date", "time", "separator"),
    list(itertools.product(DATES.values(), TIMES.values(), values.DATE_TIME_SEPARATORS)),
)
def test_every_flex_date_time_format_parses(date: str, time: str, separator: str) -> None:
    plan, column, raw = typed("dateTime", [date + separator + time])
    assert plan.type == pa.timestamp("ms") and column == [MOMENT] and raw == [None]


@pytest.mark.parametrize("date", DATES.values())
def test_every_flex_date_format_parses(date: str) -> None:
    plan, column, _ = typed("tradeDate", [date, date.lower()])
    assert plan.type == pa.date32() and column == [MOMENT.date()] * 2


@pytest.mark.parametrize("time", TIMES.values())
def test_times_parse(time: str) -> None:
    plan, column, _ = typed("tradeTime", [time])
    assert plan.type == pa.time32("ms") and column == [MOMENT.time()]


def test_date_only_values_in_a_date_time_column_are_midnight() -> None:
    _, column, _ = typed("dateTime", ["20160229;143529", "20160229"])
    assert column == [MOMENT, datetime.datetime(2016, 2, 29)]


@pytest.mark.parametrize("text", ["20150229", "2016112", "20161320", "240000", "2010-01-04T15:37:49-05:00"])
def test_impossible_or_unknown_dates_survive_as_raw_text(text: str) -> None:
    _, column, raw = typed("dateTime", ["20160229;143529", text])
    assert column == [MOMENT, None] and raw == [None, text]


def test_multi_among_dates_is_kept_raw() -> None:
    plan, column, raw = typed("tradeDate", ["MULTI", "20261120", ""])
    assert plan.raw and column == [None, datetime.date(2026, 11, 20), None] and raw == ["MULTI", None, None]


@pytest.mark.parametrize("null", values.NULL_SPELLINGS)
def test_null_spellings_are_null_in_typed_columns_and_kept_in_text(null: str) -> None:
    assert typed("tradePrice", ["1.5", null])[1:] == ([decimal.Decimal("1.5"), None], [None, None])
    assert typed("exchange", [null])[1] == [null]


def test_decimals_are_exact_with_thousands_separators_and_signs() -> None:
    plan, column, raw = typed("costBasis", ["21,792.73", "-0", "+5", "0.000000001", "1,234,567"])
    assert plan.type == pa.decimal128(38, 10) and raw == [None] * 5
    assert column == [decimal.Decimal(t) for t in ("21792.73", "0", "5", "0.000000001", "1234567")]


@given(st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**20), max_value=10**20))
def test_decimals_round_trip_exactly(number: decimal.Decimal) -> None:
    text = f"{number:f}"
    assert typed("amount", [text])[1] == [decimal.Decimal(text)]


def test_a_misfit_decimal_is_kept_raw() -> None:
    plan, column, raw = typed("quantity", ["10", "1e5", "ten"])
    assert plan.raw and column == [decimal.Decimal(10), None, None] and raw == [None, "1e5", "ten"]


def test_a_column_of_only_misfits_keeps_its_type() -> None:
    plan, column, raw = typed("dateTime", ["MULTI"])
    assert plan.type == pa.timestamp("ms") and column == [None] and raw == ["MULTI"]


def test_booleans() -> None:
    plan, column, raw = typed("isAPIOrder", ["Y", "N", "Yes", "No", "", "maybe"])
    assert plan.type == pa.bool_() and column == [True, False, True, False, None, None]
    assert raw == [None, None, None, None, None, "maybe"]


@pytest.mark.parametrize("name", ["cusip", "conid", "tradeID", "orderID", "accountId", "ClientAccountID"])
def test_identifiers_stay_text(name: str) -> None:
    assert values.declared_kind(name) == "string"
    assert typed(name, ["037833100"])[1] == ["037833100"]


def test_unknown_attributes_stay_text() -> None:
    plan, column, _ = typed("someFieldFrom2030", ["1.5", "20261120"])
    assert plan.type == pa.string() and column == ["1.5", "20261120"]


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("TradePrice", "decimal"),
        ("DateTime", "datetime"),
        ("TradeDate", "date"),
        ("Buy/Sell", "string"),
        ("IsAPIOrder", "boolean"),
    ],
)
def test_csv_headers_are_typed_like_their_xml_attributes(header: str, kind: str) -> None:
    assert values.declared_kind(header) == kind


def test_a_column_without_values_keeps_its_declared_type() -> None:
    assert typed("tradePrice", ["", None])[0].type == pa.decimal128(38, 10)


@pytest.mark.parametrize(
    "text",
    [
        "100",  # scale 0
        "-100.25",  # 2
        "79362.354191008",  # 9
        "0.1234567891",  # 10
        "1.500000000000",  # 12 written, 10 needed: trailing zeros are not digits that need a scale
        "9" * 28 + "." + "9" * 10,  # the widest that fits
        "0" * 12 + "1" * 28,  # leading zeros do not count
        "1,234,567,890,123,456,789,012,345,678",  # 28 digits with separators
    ],
)
def test_decimals_that_fit_the_one_type_are_exact(text: str) -> None:
    plan, column, raw = typed("netCash", [text])
    assert plan.type == values.DECIMAL_TYPE == pa.decimal128(38, 10)
    assert column == [decimal.Decimal(text.replace(",", ""))] and raw == [None]


@pytest.mark.parametrize(
    "text",
    ["0.12345678901", "1." + "0" * 10 + "1", "1" * 29, "1" * 29 + ".5", "1.", ".5", "1,23", "1e5"],
    ids=[
        "scale-11",
        "scale-11-zeros",
        "29-digits",
        "29-digits-point",
        "bare-point",
        "no-integer",
        "bad-group",
        "exponent",
    ],
)
def test_decimals_that_need_more_are_never_rounded(text: str) -> None:
    _, column, raw = typed("netCash", ["1", text])
    assert column == [decimal.Decimal(1), None] and raw == [None, text]


@given(
    st.lists(
        st.one_of(st.none(), st.text(max_size=12), st.from_regex(r"-?\d{1,30}(\.\d{1,14})?", fullmatch=True))
    )
)
def test_a_columns_type_never_depends_on_its_values(texts: list[str | None]) -> None:
    for name in ("netCash", "tradeDate", "dateTime", "tradeTime", "isAPIOrder", "description"):
        plan, column, raw = typed(name, texts)
        assert plan == values.plan_column(name)
        # Nothing is lost: a value is typed, or null and kept raw, or it was a null spelling.
        for text, got, kept in zip(texts, column, raw or [None] * len(texts), strict=True):
            if text is None or (plan.raw and text in values.NULL_SPELLINGS):
                assert got is None and kept is None
            elif plan.raw:
                assert (got is None) == (kept == text)
            else:
                assert got == text


def test_a_date_column_keeps_a_time_it_cannot_hold_raw() -> None:
    plan, column, raw = typed("tradeDate", ["20160229", "20160229;143529"])
    assert plan.type == pa.date32() and column == [MOMENT.date(), None] and raw == [None, "20160229;143529"]


def test_changes_since_a_previous_manifest() -> None:
    def entry(section: str, element: str, columns: dict[str, str]) -> dict[str, object]:
        return table_entry(section, element, "file:///x", 1, list(columns.items()))

    before = {"tables": {"Trades/Trade": entry("Trades", "Trade", {"a": "string", "b": "date32[day]"})}}
    now = {
        "Trades/Trade": entry("Trades", "Trade", {"a": "string", "b": "timestamp[s]", "c": "string"}),
        "Trades/Lot": entry("Trades", "Lot", {"a": "string"}),
        "NewSection": entry("NewSection", "NewSection", {"z": "string"}),
    }
    assert changes_since(before, now) == {
        "new_sections": ["NewSection"],
        "new_tables": ["NewSection", "Trades/Lot"],
        "new_columns": {"Trades/Trade": ["c"]},
        "retyped_columns": {"Trades/Trade": {"b": ["date32[day]", "timestamp[s]"]}},
    }
    assert changes_since({}, now)["new_tables"] == sorted(now)


def test_layout() -> None:
    assert table_folder("s3://b/t/", "Trades", "Trade") == "s3://b/t/section=Trades/element=Trade"
    assert split_table_name("AccountInformation") == ("AccountInformation", "AccountInformation")
    assert manifest_path("/d", "2026-11-20") == "/d/_manifests/2026-11-20.json"
