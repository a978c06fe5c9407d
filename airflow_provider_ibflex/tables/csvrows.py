"""Rows of a CSV Flex statement, read as a stream, in each layout the query settings produce.

- Plain: a header row, then data rows; a query with several sections repeats a header row (one
  that starts like the first header) where each section begins. Sections are numbered
  ``Section1``, ``Section2``, ... since the file does not name them.
- Header and trailer records: ``BOF``/``BOA``/``BOS``, then the section's header row and data rows,
  then ``EOS``/``EOA``/``EOF``.
- Section code and line descriptor: every line starts with ``HEADER``/``DATA`` and the section's
  code (``"DATA","TRNT",...``), with or without the records above.

Section codes Flex uses are mapped to the XML names of the same data (``TRNT`` is ``Trades``), so
CSV and XML statements of one query land in the same tables; trades rows go to ``Trade``, ``Order``
or ``Lot`` by their level of detail, as in XML. Column names stay as the file writes them.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from typing import IO

from airflow_provider_ibflex.protocol.service import is_digits
from airflow_provider_ibflex.tables.collect import check_plain_name
from airflow_provider_ibflex.tables.errors import FlexTablesError
from airflow_provider_ibflex.tables.xmlrows import READ_SIZE, RowSink

# Codes whose XML counterpart is certain; any other section is named from its BOS label or code.
SECTION_CODES = {
    "ACCT": ("AccountInformation", "AccountInformation"),
    "CNAV": ("ChangeInNAV", "ChangeInNAV"),
    "CRTT": ("CashReport", "CashReportCurrency"),
    "CTRN": ("CashTransactions", "CashTransaction"),
    "POST": ("OpenPositions", "OpenPosition"),
    "TRNT": ("Trades", "Trade"),
}
TRADE_LEVELS = {"EXECUTION": "Trade", "ORDER": "Order", "CLOSED_LOT": "Lot"}
CONTROL = frozenset({"BOF", "EOF", "BOA", "EOA", "BOS", "EOS", "HEADER", "DATA"})


def _lines(source: IO[bytes], read_size: int) -> Iterator[str]:
    """Decoded text in pieces of whole lines (utf-8, a byte-order mark dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    rest = ""
    while chunk := source.read(read_size):
        text = rest + decoder.decode(chunk)
        cut = text.rfind("\n") + 1
        rest = text[cut:]
        if cut:
            yield from text[:cut].splitlines(keepends=True)
    rest += decoder.decode(b"", final=True)
    if rest:
        yield rest


class _Section:
    def __init__(self, code: str, label: str, numbered: bool = False) -> None:
        known = SECTION_CODES.get(code)
        self.numbered = numbered
        self.code = code if numbered else check_plain_name(code, "CSV section code")
        # A label is free text ("Cash Report; trade date basis"): its first part, without spaces or
        # punctuation, names the section, and must then be a plain name.
        named = re.sub(r"[^0-9A-Za-z]", "", label.split(";")[0]) if label else ""
        if named and not known:
            check_plain_name(named, f"CSV section label ({label!r} gives)")
        self.name, self.element = known or (named or code, named or code)
        self.header: tuple[str, ...] | None = None
        self.level = -1  # index of LevelOfDetail in the header (trades)
        self.rows = 0

    def set_header(self, header: list[str]) -> None:
        self.header = tuple(header)
        trades = self.name == "Trades" and "LevelOfDetail" in self.header
        self.level = self.header.index("LevelOfDetail") if trades else -1

    def element_of(self, values: list[str]) -> str:
        if self.level >= 0 and self.level < len(values):
            return TRADE_LEVELS.get(values[self.level], self.element)
        return self.element


def read_csv(source: IO[bytes], sink: RowSink, read_size: int = READ_SIZE) -> dict[str, dict[str, str]]:
    """Read a CSV statement, handing statements and rows to ``sink``; return what its ``BOF`` record
    says (``accountId``, ``queryName``, ``count``, ``fromDate``, ``toDate``, ``whenGenerated``) under
    the key ``BOF``, if it has one.

    :param source: the statement's bytes.
    :param sink: receives statements and rows.
    :param read_size: bytes read at a time.
    """
    outer: dict[str, str] = {}
    records = csv.reader(_lines(source, read_size), strict=True)
    section: _Section | None = None
    sections: dict[str, _Section] = {}
    by_header: dict[tuple[str, ...], _Section] = {}
    controlled: bool | None = None  # whether the file has control records, known from its first
    try:
        for number, record in enumerate(records, start=1):
            if not record:
                continue
            if controlled is None:
                controlled = record[0] in CONTROL
            tag = record[0] if controlled else ""
            if tag == "BOF":
                outer.update(_bof(record))
            elif tag == "BOA":
                sink.statement({**_statement_dates(outer), "accountId": _at(record, 1)})
            elif tag in ("EOA", "EOF"):
                section = None
            elif tag == "BOS":
                section = sections.setdefault(_at(record, 1), _Section(_at(record, 1), _at(record, 2)))
                section.header, section.rows = None, 0
            elif tag == "EOS":
                _check_section_count(section, record, number)
                section = None
            elif tag == "HEADER":
                section = sections.setdefault(_at(record, 1), _Section(_at(record, 1), ""))
                section.set_header(_names(record[2:], number))
            elif tag == "DATA":
                section = sections.get(_at(record, 1))
                if section is None or section.header is None:
                    raise FlexTablesError(
                        f"line {number}: a DATA record of section {_at(record, 1)!r} before its HEADER "
                        "record; the statement is incomplete. Download it again."
                    )
                _emit(sink, section, record[2:], number)
            else:  # a header or data row without a line descriptor
                if section is None or (
                    section.numbered and section.header is not None and record[0] == section.header[0]
                ):
                    # A plain file's new section: one with the same header is the same section.
                    header = tuple(_names(record, number))
                    if header not in by_header:
                        by_header[header] = _Section("", f"Section{len(by_header) + 1}", numbered=True)
                        by_header[header].set_header(list(header))
                    section = by_header[header]
                elif section.header is None:
                    section.set_header(_names(record, number))
                else:
                    _emit(sink, section, record, number)
    except csv.Error as exc:
        raise FlexTablesError(
            f"line {records.line_num}: not valid CSV ({exc}); the statement is damaged or not a "
            "Flex CSV statement. Download it again."
        ) from None
    return {"BOF": outer} if outer else {}


def _names(header: list[str], number: int) -> list[str]:
    if len(set(header)) != len(header):
        twice = sorted({name for name in header if header.count(name) > 1})
        raise FlexTablesError(
            f"line {number}: the header names {twice} twice, so their columns could not both be kept; "
            "remove the duplicate field from the Flex Query."
        )
    return header


def _emit(sink: RowSink, section: _Section, values: list[str], number: int) -> None:
    assert section.header is not None
    if len(values) != len(section.header):
        raise FlexTablesError(
            f"line {number}: {len(values)} values under a header of {len(section.header)} columns in "
            f"section {section.name}; the statement is damaged. Download it again."
        )
    section.rows += 1
    sink.row(section.name, section.element_of(values), section.header, values)


def _check_section_count(section: _Section | None, record: list[str], number: int) -> None:
    declared = _at(record, 2)
    if section is not None and is_digits(declared) and int(declared) != section.rows:
        raise FlexTablesError(
            f"line {number}: section {section.name} declares {declared} rows but has {section.rows}; "
            "the statement is incomplete. Download it again."
        )


def _at(record: list[str], index: int) -> str:
    return record[index] if index < len(record) else ""


def _bof(record: list[str]) -> dict[str, str]:
    # BOF, account, query name, [count,] from date, to date, when generated, ...
    fields = record[1:]
    info = {"accountId": _at(fields, 0), "queryName": _at(fields, 1)}
    rest = fields[2:]
    if rest and is_digits(rest[0]) and len(rest[0]) <= 4:
        info["count"] = rest[0]
        rest = rest[1:]
    for name, value in zip(("fromDate", "toDate", "whenGenerated"), rest, strict=False):
        info[name] = value
    return info


def _statement_dates(outer: dict[str, str]) -> dict[str, str]:
    return {name: outer[name] for name in ("fromDate", "toDate", "whenGenerated") if name in outer}
