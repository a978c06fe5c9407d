"""Rows gathered into per-table batches and spooled to local Arrow IPC files (the first pass).

A table's columns are known only once the whole statement has been read (an optional attribute may
first appear in its last row), so rows are spooled as text in bounded batches, in document order,
each with its position in the statement; the second pass (``convert``) rereads the spool and writes
the final, typed tables. Memory holds one batch of rows, never a table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from airflow_provider_ibflex.tables.errors import FlexTablesError

# Columns every row carries besides its own attributes. A row's own accountId wins (it is the same
# thing); an attribute with any other of these names is refused, since it would be ambiguous.
SECTION = "section"
ROW_NUMBER = "rowNumber"
ACCOUNT = "accountId"
STATEMENT_COLUMNS = {
    "fromDate": "statementFromDate",
    "toDate": "statementToDate",
    "period": "statementPeriod",
    "whenGenerated": "statementWhenGenerated",
}
# The sha256 of the statement's file: with the account and period, it identifies a row's statement.
SHA256 = "statementSha256"
CARRIED_KINDS = {
    SECTION: "string",
    ACCOUNT: "string",
    "statementFromDate": "date",
    "statementToDate": "date",
    "statementPeriod": "string",
    "statementWhenGenerated": "datetime",
    SHA256: "string",
}
RESERVED = frozenset({SECTION, ROW_NUMBER, SHA256, *STATEMENT_COLUMNS.values()})
# A section or row element's name becomes a folder: a plain name only (no namespace, no separator,
# nothing a path could climb with).
PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Attribute values held before the batches are spooled: bounds the rows kept in memory (~8 MB).
FLUSH_VALUES = 100_000
_SPOOL_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def check_plain_name(name: str, what: str) -> str:
    """``name`` if it may name a folder, else a ``FlexTablesError`` naming it.

    :param name: a section or row element's name, from the statement.
    :param what: what it is, for the message (``"section"``, ``"element"``, ...).
    """
    if PLAIN_NAME.fullmatch(name):
        return name
    raise FlexTablesError(
        f"the statement has a {what} named {name!r}, which is not a plain name (a letter, then letters, "
        "digits or underscores); Flex never writes one, and it cannot name a table's folder. Nothing "
        "was written: convert the statement as Flex delivered it."
    )


@dataclass
class _Run:
    """Consecutive rows of one table with the same attributes, from one statement."""

    statement: int
    names: tuple[str, ...]
    rows: list[list[str]] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)


@dataclass
class Table:
    """One (section, row element) table while the statement is read.

    :param section: the section, e.g. ``Trades``.
    :param element: the row element, e.g. ``Trade``.
    """

    section: str
    element: str
    rows: int = 0
    # The rows' attributes, in the order first seen (the values are unused: an ordered set).
    columns: dict[str, None] = field(default_factory=dict)
    # Whether some rows have no accountId of their own and carry their statement's.
    carries_account: bool = False
    pending: list[_Run] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    spool: str = ""

    @property
    def name(self) -> str:
        """``Section/Element``, or the section alone for a section that is itself a row."""
        return self.section if self.element == self.section else f"{self.section}/{self.element}"

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The spooled batches, read back one at a time, in document order."""
        if not self.spans:
            return
        # Read into memory, not mapped: a batch may outlive the loop (held in a row group).
        with pa.OSFile(self.spool, "rb") as source:
            for offset, length in self.spans:
                source.seek(offset)
                yield from pa.ipc.open_stream(source.read_buffer(length))


class TableCollector:
    """Receives statements and rows (a ``RowSink``) and spools them, table by table.

    :param spool_folder: a local folder for the spool files (removed by the caller).
    :param flush_values: attribute values held in memory before they are spooled.
    """

    def __init__(self, spool_folder: str, flush_values: int = FLUSH_VALUES) -> None:
        self.spool_folder = spool_folder
        self.flush_values = flush_values
        self.tables: dict[tuple[str, str], Table] = {}
        self.statements: list[dict[str, str]] = []
        self._held = 0
        self._number = 0
        self._files: dict[tuple[str, str], pa.NativeFile] = {}

    # -- RowSink --------------------------------------------------------------------------------

    def statement(self, attributes: dict[str, str]) -> None:
        self.statements.append(attributes)

    def row(self, section: str, element: str, names: tuple[str, ...], values: list[str]) -> None:
        table = self.tables.get((section, element))
        if table is None:
            table = self._new_table(section, element)
        self._number += 1
        statement = len(self.statements) - 1
        run = table.pending[-1] if table.pending else None
        if run is None or run.names != names or run.statement != statement:
            run = self._new_run(table, statement, names)
        run.rows.append(values)
        run.numbers.append(self._number)
        table.rows += 1
        self._held += len(values)
        if self._held >= self.flush_values:
            self.flush()

    def _new_table(self, section: str, element: str) -> Table:
        check_plain_name(section, "section")
        check_plain_name(element, "row element")
        table = self.tables[(section, element)] = Table(section, element)
        return table

    def _new_run(self, table: Table, statement: int, names: tuple[str, ...]) -> _Run:
        clash = RESERVED.intersection(names)
        if clash:
            raise FlexTablesError(
                f"{table.name} rows have an attribute named {sorted(clash)[0]!r}, a column the converter "
                "adds to every row; it cannot keep both. Nothing was written: remove that field from "
                "the Flex Query."
            )
        run = _Run(statement, names)
        table.pending.append(run)
        table.columns.update(dict.fromkeys(names))
        return run

    # -- spooling ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Spool every held row, one batch per table, in document order."""
        for key, table in self.tables.items():
            if table.pending:
                self._spool(key, table, self._merged(table, table.pending))
                table.pending = []
        self._held = 0

    def close(self) -> None:
        """Spool what is held and close the spool files."""
        self.flush()
        for sink in self._files.values():
            sink.close()
        self._files.clear()

    def _merged(self, table: Table, runs: list[_Run]) -> pa.RecordBatch:
        batches = [self._batch(table, run) for run in runs]
        if len(batches) == 1:
            return batches[0]
        # Rows with different attributes, in document order: one batch, absent attributes null.
        merged = pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="default")
        return merged.combine_chunks().to_batches()[0]

    def _batch(self, table: Table, run: _Run) -> pa.RecordBatch:
        count = len(run.rows)
        arrays = [pa.array(column, pa.string()) for column in zip(*run.rows, strict=True)]
        columns: dict[str, pa.Array] = dict(zip(run.names, arrays, strict=True))
        info = self.statements[run.statement] if run.statement >= 0 else {}
        carried: dict[str, pa.Array] = {
            SECTION: _constant(table.section, count),
            ROW_NUMBER: pa.array(run.numbers, pa.int64()),
        }
        if ACCOUNT not in columns:
            # A plain CSV names the account only in each row.
            carried[ACCOUNT] = columns.get("ClientAccountID", _constant(info.get(ACCOUNT), count))
            table.carries_account = True
        for source, name in STATEMENT_COLUMNS.items():
            carried[name] = _constant(info.get(source), count)
        return pa.RecordBatch.from_pydict({**columns, **carried})

    def _spool(self, key: tuple[str, str], table: Table, batch: pa.RecordBatch) -> None:
        sink = self._files.get(key)
        if sink is None:
            table.spool = os.path.join(self.spool_folder, f"table-{len(self._files)}.arrows")
            sink = self._files[key] = pa.OSFile(table.spool, "wb")
        start = sink.tell()
        with pa.ipc.new_stream(sink, batch.schema, options=_SPOOL_OPTIONS) as writer:
            writer.write_batch(batch)
        table.spans.append((start, sink.tell() - start))


def _constant(value: str | None, count: int) -> pa.Array:
    nulls = pa.nulls(count, pa.string())
    return nulls if value is None else nulls.fill_null(value)
