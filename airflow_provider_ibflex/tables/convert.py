"""Convert a landed Flex statement into typed per-section tables (Parquet or CSV) and a manifest.

Two passes, bounded memory: the statement is read once as a stream and its rows are spooled locally
by table (``collect``); then each table is written, typed, from its spool (``values``). Each file is
written atomically (``atomic``) under a name unique to the run, and the set is published by the
manifest, written last (``publish``): a reader that starts from the manifests only sees whole sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any
from xml.etree.ElementTree import ParseError

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from defusedxml import DefusedXmlException

from airflow_provider_ibflex.atomic import atomic_open
from airflow_provider_ibflex.protocol.bodies import HEAD_BYTES, BodyKind, classify_body
from airflow_provider_ibflex.protocol.service import is_digits
from airflow_provider_ibflex.tables import catalogue
from airflow_provider_ibflex.tables import values as typing_
from airflow_provider_ibflex.tables.collect import (
    ACCOUNT,
    CARRIED_KINDS,
    ROW_NUMBER,
    SECTION,
    SHA256,
    STATEMENT_COLUMNS,
    Table,
    TableCollector,
)
from airflow_provider_ibflex.tables.csvrows import read_csv
from airflow_provider_ibflex.tables.errors import FlexTablesError
from airflow_provider_ibflex.tables.keys import rule_for
from airflow_provider_ibflex.tables.layout import table_folder
from airflow_provider_ibflex.tables.manifest import MANIFEST_VERSION, changes_since, table_entry
from airflow_provider_ibflex.tables.publish import Publication, check_file_name
from airflow_provider_ibflex.tables.xmlrows import read_xml

log = logging.getLogger(__name__)
FORMATS = ("parquet", "csv", "delta")
# Typed data held per Parquet row group (and per CSV write): large enough for scans, small enough to
# keep memory flat.
ROW_GROUP_BYTES = 4 * 1024 * 1024


def locate(target: Any) -> tuple[Any, str]:
    """The fsspec filesystem and path of a URL, a local path, or a UPath/ObjectStoragePath.

    :param target: where to read or write.
    """
    fs = getattr(target, "fs", None)
    if fs is not None:
        return fs, str(target.path)
    fs, path = fsspec.core.url_to_fs(str(target))
    return fs, path


def convert_statement(
    source: Any,
    destination: Any,
    *,
    output_format: str = "parquet",
    name: str | None = None,
    previous_manifest: Mapping[str, Any] | None = None,
    expected_sha256: str | None = None,
    spool_folder: str | None = None,
    merge_keys: Mapping[str, Sequence[str]] | None = None,
    delta_storage_options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Convert a statement into one table per (section, row element) under ``destination``, publish
    them, and return the manifest, which is written last to ``<destination>/_manifests/<name>.json``.

    Parquet and CSV tables are laid out for partition-aware engines:
    ``<destination>/section=<Section>/element=<Element>/<name>.<run>.<parquet|csv>``, where ``<run>``
    is this conversion's id. A rerun under the same name replaces the previous run's set once the new
    one is published (see ``publish``); a run that fails leaves the previous set as it was.

    Delta tables are one per (section, row element) at ``<destination>/<Section>/<Element>``, holding
    every statement converted there, each table changed in one commit (see ``delta``).

    :param source: the landed statement (URL, local path, or ObjectStoragePath).
    :param destination: the folder the tables go under (URL, local path, or ObjectStoragePath).
    :param output_format: ``parquet``, ``csv`` or ``delta``.
    :param name: the files' name; the statement's file name without its extension by default.
    :param previous_manifest: an earlier conversion's manifest, to report what is new since.
    :param expected_sha256: the statement's sha256 as landed; the statement read must match it.
    :param spool_folder: a local folder for the spool (the system's temporary folder by default).
    :param merge_keys: Delta only: natural keys by table, replacing the catalogue's
        (``{"Trades/Trade": ["transactionID"]}``; an empty list: replace per account and period).
    :param delta_storage_options: Delta only: delta-rs storage options, over those derived from
        the destination's filesystem.
    """
    if output_format not in FORMATS:
        raise FlexTablesError(f"output_format must be one of {FORMATS}, got {output_format!r}")
    source_fs, source_path = locate(source)
    dest_fs, dest_path = locate(destination)
    dest_path = dest_path.rstrip("/")
    stem = check_file_name(name or posixpath.basename(source_path).rsplit(".", 1)[0])
    with tempfile.TemporaryDirectory(prefix="ibflex-tables-", dir=spool_folder) as spool:
        collector = TableCollector(spool)
        with source_fs.open(source_path, "rb") as handle:
            reader = HashingReader(handle)
            kind, outer = _read(reader, collector, source_path)
        collector.close()
        if expected_sha256 and reader.hexdigest() != expected_sha256.lower():
            raise FlexTablesError(
                f"{source_path} is not the statement that landed: its sha256 is {reader.hexdigest()}, "
                f"the sensor recorded {expected_sha256}. It was changed since; download it again."
            )
        publication = Publication(dest_fs, dest_path, stem)
        tables = sorted(collector.tables.values(), key=lambda t: t.name)
        constants = {SHA256: reader.hexdigest()}
        manifest: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "name": stem,
            "run": publication.run,
            "source": {
                "uri": source_fs.unstrip_protocol(source_path),
                "format": kind,
                "size": reader.size,
                "sha256": reader.hexdigest(),
            },
            "response": outer,
            "query": _query(outer),
            "statements": _check_count(kind, outer, collector),
            "format": output_format,
            "destination": dest_fs.unstrip_protocol(dest_path),
            "tables": {},
        }
        if output_format == "delta":
            _write_delta(tables, dest_fs, dest_path, manifest, constants, merge_keys, delta_storage_options)
        else:
            _write_files(tables, dest_fs, dest_path, manifest, constants, publication, output_format)
        manifest["rows"] = sum(table.rows for table in tables)
        if previous_manifest is not None:
            manifest["changes"] = changes_since(previous_manifest, manifest["tables"])
        manifest["uri"] = dest_fs.unstrip_protocol(publication.manifest_path)
        if output_format == "delta":
            # The cross-table record of this statement's commits, written last.
            with atomic_open(dest_fs, publication.manifest_path) as out:
                out.write(json.dumps(manifest, indent=2).encode())
        else:
            try:
                publication.commit(manifest)
            except BaseException:
                publication.abort()
                raise
            publication.retire()
    return manifest


def _write_files(
    tables: list[Table],
    fs: Any,
    root: str,
    manifest: dict[str, Any],
    constants: dict[str, str],
    publication: Publication,
    output_format: str,
) -> None:
    """Parquet or CSV: each table a file of this run's, recorded before anything is written."""
    folders = {table.name: table_folder(root, table.section, table.element) for table in tables}
    paths = {name: publication.file_path(folder, output_format) for name, folder in folders.items()}
    publication.begin(paths.values())
    try:
        for table in tables:
            path = paths[table.name]
            columns = write_table(table, fs, path, output_format, constants)
            publication.wrote(path)
            manifest["tables"][table.name] = table_entry(
                table.section, table.element, fs.unstrip_protocol(path), table.rows, columns
            )
    except BaseException:
        publication.abort()
        raise


def _write_delta(
    tables: list[Table],
    fs: Any,
    root: str,
    manifest: dict[str, Any],
    constants: dict[str, str],
    merge_keys: Mapping[str, Sequence[str]] | None,
    extra_options: Mapping[str, str] | None,
) -> None:
    """Delta: each table merged or replaced in one commit of its own (see ``delta``)."""
    from airflow_provider_ibflex.tables import delta

    options = delta.storage_options(fs, extra_options)
    metadata = {
        "ibflex.name": manifest["name"],
        "ibflex.run": manifest["run"],
        "ibflex.sha256": constants[SHA256],
    }
    rules = {table.name: rule_for(table.name, table.columns, merge_keys) for table in tables}
    plans = {table.name: plan_table(table) for table in tables}

    def batches(table: Table) -> Callable[[], Iterator[pa.RecordBatch]]:
        schema = table_schema(plans[table.name])
        return lambda: (_typed(batch, plans[table.name], schema, constants) for batch in table.batches())

    # Every key is checked before any table is written: a refused statement writes nothing.
    for table in tables:
        delta.check_unique(batches(table)(), rules[table.name])
    for table in tables:
        schema = table_schema(plans[table.name])
        location = delta.table_location(fs, root, table.section, table.element)
        written = delta.write_table(location, options, schema, batches(table), rules[table.name], metadata)
        entry = table_entry(
            table.section, table.element, location, table.rows, [(f.name, str(f.type)) for f in schema]
        )
        entry |= {"version": written["version"], "rule": rules[table.name].describe()}
        manifest["tables"][table.name] = entry


class HashingReader:
    """A binary file's reads, hashed (sha256) as they pass; one rewind to the start is allowed.

    :param handle: the file.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._sha.update(data)
        self.size += len(data)
        return data

    def seek(self, offset: int) -> None:
        if offset != 0:
            raise ValueError("only a rewind to the start is supported")
        self._handle.seek(0)
        self._sha = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _read(handle: Any, collector: TableCollector, path: str) -> tuple[str, dict[str, dict[str, str]]]:
    head = handle.read(HEAD_BYTES)
    handle.seek(0)
    # What the bytes are is the protocol core's call, as for every body the service sends.
    body = classify_body(head, complete=len(head) < HEAD_BYTES)
    if body is BodyKind.EMPTY:
        raise FlexTablesError(f"{path} is empty; a landed statement never is. Download it again.")
    if body not in (BodyKind.XML_STATEMENT, BodyKind.TEXT_STATEMENT):
        raise FlexTablesError(
            f"{path} is not a Flex statement (it looks like {body.value}: a status envelope, an error "
            "page or another file); convert the statement the sensor landed."
        )
    kind = "xml" if body is BodyKind.XML_STATEMENT else "csv"
    try:
        outer = read_xml(handle, collector) if kind == "xml" else read_csv(handle, collector)
    except DefusedXmlException as exc:
        raise FlexTablesError(
            f"{path}: {exc}; Flex statements never declare one, so it was refused unread."
        ) from None
    except ParseError as exc:
        raise FlexTablesError(
            f"{path} is not well-formed XML ({exc}); it is truncated or not a Flex statement. "
            "Download it again."
        ) from None
    return kind, outer


def _query(outer: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The query's name and type, from the XML root or the CSV BOF record."""
    found = {**outer.get("BOF", {}), **outer.get("FlexQueryResponse", {})}
    return {key: found[key] for key in ("queryName", "type") if key in found}


def _check_count(
    kind: str, outer: Mapping[str, Mapping[str, str]], collector: TableCollector
) -> dict[str, Any]:
    """The FlexStatements count check (every statement the response declares was read), and every
    statement's own attributes, as written."""
    found = len(collector.statements)
    declared_text = outer.get("FlexStatements", outer.get("BOF", {})).get("count", "")
    declared = int(declared_text) if is_digits(declared_text) else None
    if kind == "xml" and declared is not None and declared != found:
        raise FlexTablesError(
            f"FlexStatements declares {declared} statements but {found} were found; the statement "
            "is incomplete or was altered. Download it again."
        )
    return {
        "declared": declared,
        "found": found,
        "check": "not declared" if declared is None else "passed" if kind == "xml" else "not checked",
        "accounts": sorted({s.get(ACCOUNT, "") for s in collector.statements} - {""}),
        "periods": [dict(s) for s in collector.statements],
    }


def plan_table(table: Table) -> list[typing_.ColumnPlan]:
    """The columns a table is written with, in a stable order: ``section`` and ``rowNumber``, the
    row element's attributes in the catalogue's order, attributes the catalogue does not list for it
    in the order first seen, then what every row carries (its account, its statement's dates and
    period, and the statement's sha256). The plan depends on the column names only, never on the
    values.

    :param table: the collected table.
    """
    order = {name: index for index, name in enumerate(catalogue.ELEMENT_ATTRIBUTES.get(table.element, ()))}
    known = sorted((n for n in table.columns if n in order), key=order.__getitem__)
    unknown = [n for n in table.columns if n not in order]
    carried = [*STATEMENT_COLUMNS.values(), SHA256]
    if table.carries_account and ACCOUNT not in table.columns:
        carried.insert(0, ACCOUNT)
    plans = [typing_.plan_column(SECTION, "string"), typing_.plan_column(ROW_NUMBER, "integer")]
    plans += [typing_.plan_column(name) for name in (*known, *unknown)]
    plans += [typing_.plan_column(name, CARRIED_KINDS[name]) for name in carried]
    return plans


def table_schema(plans: list[typing_.ColumnPlan]) -> pa.Schema:
    """The Arrow schema of a table's plans: each typed column followed by its raw companion.

    :param plans: the table's column plans (``plan_table``).
    """
    fields = []
    for plan in plans:
        fields.append(pa.field(plan.name, plan.type))
        if plan.raw:
            fields.append(pa.field(plan.name + typing_.RAW_SUFFIX, pa.string()))
    return pa.schema(fields)


def write_table(
    table: Table, fs: Any, path: str, output_format: str, constants: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Write one table from its spool, typed, atomically; return its columns' names and types.

    :param table: the collected table.
    :param fs: the destination filesystem.
    :param path: the file's path on it.
    :param output_format: ``parquet`` or ``csv``.
    :param constants: the values of the columns every row of the statement shares (its sha256).
    """
    plans = plan_table(table)
    schema = table_schema(plans)
    with atomic_open(fs, path) as handle:
        writer: Any = (
            pq.ParquetWriter(
                handle,
                schema,
                compression="snappy",
                # Row numbers only grow: delta encoding stores them in almost nothing.
                use_dictionary=[name for name in schema.names if name != ROW_NUMBER],
                column_encoding={ROW_NUMBER: "DELTA_BINARY_PACKED"},
            )
            if output_format == "parquet"
            else pa_csv.CSVWriter(handle, schema)
        )
        held: list[pa.RecordBatch] = []
        held_bytes = 0
        for batch in table.batches():
            typed = _typed(batch, plans, schema, constants)
            held.append(typed)
            held_bytes += typed.nbytes
            if held_bytes >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_batches(held, schema))
                held, held_bytes = [], 0
        if held or not table.rows:
            writer.write_table(pa.Table.from_batches(held, schema))
        writer.close()
    return [(f.name, str(f.type)) for f in schema]


def _typed(
    batch: pa.RecordBatch, plans: list[typing_.ColumnPlan], schema: pa.Schema, constants: Mapping[str, str]
) -> pa.RecordBatch:
    arrays: list[pa.Array] = []
    for plan in plans:
        index = batch.schema.get_field_index(plan.name)
        if plan.name in constants:
            text = pa.nulls(batch.num_rows, pa.string()).fill_null(constants[plan.name])
        else:
            text = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, pa.string())
        typed, raw = typing_.convert(plan, text)
        arrays.append(typed)
        if plan.raw:
            arrays.append(raw if raw is not None else pa.nulls(batch.num_rows, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
