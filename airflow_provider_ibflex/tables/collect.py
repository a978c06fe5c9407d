"""Rows gathered into per-table batches and spooled to local Arrow IPC files (the first pass).

A table's columns and types are known only once the whole statement has been read (an optional
attribute may first appear in its last row), so rows are spooled as text in bounded batches while
each column's stats are gathered; the second pass (``convert``) rereads the spool and writes the
final, typed tables. Memory holds one batch of rows, never a table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from airflow_provider_ibflex.tables import values as typing_
from airflow_provider_ibflex.tables.values import ColumnStats

# Columns every row carries, after its own attributes. A row's own attribute of the same name wins.
SECTION = "section"
ACCOUNT = "accountId"
STATEMENT_COLUMNS = {
    "fromDate": "statementFromDate",
    "toDate": "statementToDate",
    "whenGenerated": "statementWhenGenerated",
}
METADATA_KINDS = {SECTION: "string", ACCOUNT: "string"} | dict.fromkeys(
    STATEMENT_COLUMNS.values(), "temporal"
)
# Attribute values held before the batches are spooled: bounds the rows kept in memory (~8 MB).
FLUSH_VALUES = 100_000
_SPOOL_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def column_kind(name: str) -> str:
    """The declared kind of a column, the carried columns included.

    :param name: the column's name.
    """
    return METADATA_KINDS.get(name) or typing_.declared_kind(name)


@dataclass
class Table:
    """One (section, row element) table while the statement is read.

    :param section: the section, e.g. ``Trades``.
    :param element: the row element, e.g. ``Trade``.
    """

    section: str
    element: str
    rows: int = 0
    columns: dict[str, ColumnStats] = field(default_factory=dict)
    pending: dict[tuple[int, tuple[str, ...]], list[list[str]]] = field(default_factory=dict)
    spans: list[tuple[int, int]] = field(default_factory=list)
    spool: str = ""

    @property
    def name(self) -> str:
        """``Section/Element``, or the section alone for a section that is itself a row."""
        return self.section if self.element == self.section else f"{self.section}/{self.element}"

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The spooled batches, read back one at a time."""
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
        self._files: dict[tuple[str, str], pa.NativeFile] = {}

    # -- RowSink --------------------------------------------------------------------------------

    def statement(self, attributes: dict[str, str]) -> None:
        self.statements.append(attributes)

    def row(self, section: str, element: str, names: tuple[str, ...], values: list[str]) -> None:
        table = self.tables.get((section, element))
        if table is None:
            table = self.tables[(section, element)] = Table(section, element)
        key = (len(self.statements) - 1, names)
        group = table.pending.get(key)
        if group is None:
            group = table.pending[key] = []
        group.append(values)
        table.rows += 1
        self._held += len(values)
        if self._held >= self.flush_values:
            self.flush()

    # -- spooling ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Spool every held row."""
        for key, table in self.tables.items():
            for (statement, names), rows in table.pending.items():
                self._spool(key, table, self._batch(table, statement, names, rows))
            table.pending.clear()
        self._held = 0

    def close(self) -> None:
        """Spool what is held and close the spool files."""
        self.flush()
        for sink in self._files.values():
            sink.close()
        self._files.clear()

    def _batch(
        self, table: Table, statement: int, names: tuple[str, ...], rows: list[list[str]]
    ) -> pa.RecordBatch:
        count = len(rows)
        arrays = [pa.array(column, pa.string()) for column in zip(*rows, strict=True)]
        if not arrays:  # elements with attributes always have some; kept for safety
            arrays, names = [], ()
        columns = dict(zip(names, arrays, strict=True))
        info = self.statements[statement] if statement >= 0 else {}
        carried: dict[str, pa.Array] = {SECTION: _constant(table.section, count)}
        if ACCOUNT not in columns:
            # A plain CSV names the account only in each row.
            carried[ACCOUNT] = columns.get("ClientAccountID", _constant(info.get(ACCOUNT), count))
        for source, name in STATEMENT_COLUMNS.items():
            carried[name] = _constant(info.get(source), count)
        for name, array in carried.items():
            columns.setdefault(name, array)
        return pa.RecordBatch.from_pydict(columns)

    def _spool(self, key: tuple[str, str], table: Table, batch: pa.RecordBatch) -> None:
        for name, array in zip(batch.schema.names, batch.columns, strict=True):
            stats = typing_.observe(column_kind(name), array)
            known = table.columns.get(name)
            table.columns[name] = stats if known is None else known.merge(stats)
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
