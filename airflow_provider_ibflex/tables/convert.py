"""Convert a landed Flex statement into typed per-section tables (Parquet or CSV) and a manifest.

Two passes, bounded memory: the statement is read once as a stream and its rows are spooled locally
by table (``collect``); then each table is written, typed, from its spool (``values``). Each file is
written atomically (``atomic``) and the manifest last, so a reader that starts from the manifest only
sees complete conversions; on failure, what this conversion wrote is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
import tempfile
from collections.abc import Mapping
from typing import IO, Any
from xml.etree.ElementTree import ParseError

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from defusedxml import DefusedXmlException

from airflow_provider_ibflex.atomic import atomic_open
from airflow_provider_ibflex.protocol.bodies import HEAD_BYTES, BodyKind, classify_body
from airflow_provider_ibflex.tables import values as typing_
from airflow_provider_ibflex.tables.collect import SECTION, STATEMENT_COLUMNS, Table, TableCollector
from airflow_provider_ibflex.tables.csvrows import read_csv
from airflow_provider_ibflex.tables.errors import FlexTablesError
from airflow_provider_ibflex.tables.layout import manifest_path, table_folder
from airflow_provider_ibflex.tables.manifest import MANIFEST_VERSION, changes_since, table_entry
from airflow_provider_ibflex.tables.xmlrows import read_xml

log = logging.getLogger(__name__)
FORMATS = ("parquet", "csv")
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
) -> dict[str, Any]:
    """Convert a statement into one table per (section, row element) under ``destination`` and
    return the manifest, which is also written to ``<destination>/_manifests/<name>.json``.

    Tables are laid out for partition-aware engines:
    ``<destination>/section=<Section>/element=<Element>/<name>.<parquet|csv>``.

    :param source: the landed statement (URL, local path, or ObjectStoragePath).
    :param destination: the folder the tables go under (URL, local path, or ObjectStoragePath).
    :param output_format: ``parquet`` or ``csv``.
    :param name: the files' name; the statement's file name without its extension by default.
    :param previous_manifest: an earlier conversion's manifest, to report what is new since.
    :param expected_sha256: the statement's sha256 as landed; the statement read must match it.
    :param spool_folder: a local folder for the spool (the system's temporary folder by default).
    """
    if output_format not in FORMATS:
        raise FlexTablesError(f"output_format must be one of {FORMATS}, got {output_format!r}")
    source_fs, source_path = locate(source)
    dest_fs, dest_path = locate(destination)
    dest_path = dest_path.rstrip("/")
    stem = name or posixpath.basename(source_path).rsplit(".", 1)[0]
    if not stem or "/" in stem:
        raise FlexTablesError(f"name {stem!r} cannot name a file; give a plain name such as '2026-11-20'")
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
        statements = _check_count(kind, outer, collector)
        manifest: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "source": {"uri": source_fs.unstrip_protocol(source_path), "format": kind},
            "query": {key: outer[key] for key in ("queryName", "type") if key in outer},
            "statements": statements,
            "format": output_format,
            "destination": dest_fs.unstrip_protocol(dest_path),
            "tables": {},
        }
        written: list[str] = []
        try:
            for table in sorted(collector.tables.values(), key=lambda t: t.name):
                folder = table_folder(dest_path, table.section, table.element)
                path = posixpath.join(folder, f"{stem}.{output_format}")
                columns = write_table(table, dest_fs, path, output_format, written)
                manifest["tables"][table.name] = table_entry(
                    table.section, table.element, dest_fs.unstrip_protocol(path), table.rows, columns
                )
            manifest["rows"] = sum(table.rows for table in collector.tables.values())
            if previous_manifest is not None:
                manifest["changes"] = changes_since(previous_manifest, manifest["tables"])
            manifest_at = manifest_path(dest_path, stem)
            manifest["uri"] = dest_fs.unstrip_protocol(manifest_at)
            with atomic_open(dest_fs, manifest_at) as out:
                out.write(json.dumps(manifest, indent=2).encode())
        except BaseException:
            _remove(dest_fs, written)
            raise
    return manifest


class HashingReader:
    """A binary file's reads, hashed (sha256) as they pass; one rewind to the start is allowed.

    :param handle: the file.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._sha.update(data)
        return data

    def seek(self, offset: int) -> None:
        if offset != 0:
            raise ValueError("only a rewind to the start is supported")
        self._handle.seek(0)
        self._sha = hashlib.sha256()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _read(handle: Any, collector: TableCollector, path: str) -> tuple[str, dict[str, str]]:
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


def _check_count(kind: str, outer: dict[str, str], collector: TableCollector) -> dict[str, Any]:
    """The FlexStatements count check: every statement the response declares was read."""
    found = len(collector.statements)
    declared_text = outer.get("count")
    declared = int(declared_text) if declared_text and declared_text.isdigit() else None
    if kind == "xml" and declared is not None and declared != found:
        raise FlexTablesError(
            f"FlexStatements declares {declared} statements but {found} were found; the statement "
            "is incomplete or was altered. Download it again."
        )
    return {
        "declared": declared,
        "found": found,
        "check": "not declared" if declared is None else "passed" if kind == "xml" else "not checked",
        "accounts": sorted({s.get("accountId", "") for s in collector.statements} - {""}),
        "periods": [
            {key: s[key] for key in ("accountId", *STATEMENT_COLUMNS) if key in s}
            for s in collector.statements
        ],
    }


def plan_table(table: Table) -> list[typing_.ColumnPlan]:
    """The columns a table is written with, in order: its section, its rows' attributes in the order
    first seen, then the statement's dates.

    :param table: the collected table.
    """
    carried = [SECTION, *STATEMENT_COLUMNS.values()]
    names = [SECTION, *(n for n in table.columns if n not in carried), *carried[1:]]
    return [typing_.decide(n, table.columns[n]) for n in names if n in table.columns]


def write_table(
    table: Table, fs: Any, path: str, output_format: str, written: list[str]
) -> list[tuple[str, str]]:
    """Write one table from its spool, typed, atomically; return its columns' names and types.

    :param table: the collected table.
    :param fs: the destination filesystem.
    :param path: the file's path on it.
    :param output_format: ``parquet`` or ``csv``.
    :param written: paths written so far (appended to once this one is).
    """
    plans = plan_table(table)
    fields = []
    for plan in plans:
        fields.append(pa.field(plan.name, plan.type))
        if plan.raw:
            fields.append(pa.field(plan.name + typing_.RAW_SUFFIX, pa.string()))
    schema = pa.schema(fields)
    with atomic_open(fs, path) as handle:
        writer: Any = (
            pq.ParquetWriter(handle, schema, compression="snappy")
            if output_format == "parquet"
            else pa_csv.CSVWriter(handle, schema)
        )
        held: list[pa.RecordBatch] = []
        held_bytes = 0
        for batch in table.batches():
            typed = _typed(batch, plans, schema)
            held.append(typed)
            held_bytes += typed.nbytes
            if held_bytes >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_batches(held, schema))
                held, held_bytes = [], 0
        if held or not table.rows:
            writer.write_table(pa.Table.from_batches(held, schema))
        writer.close()
    written.append(path)
    return [(f.name, str(f.type)) for f in schema]


def _typed(batch: pa.RecordBatch, plans: list[typing_.ColumnPlan], schema: pa.Schema) -> pa.RecordBatch:
    arrays: list[pa.Array] = []
    for plan in plans:
        index = batch.schema.get_field_index(plan.name)
        text = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, pa.string())
        typed, raw = typing_.convert(plan, text)
        arrays.append(typed)
        if plan.raw:
            arrays.append(raw if raw is not None else pa.nulls(batch.num_rows, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _remove(fs: Any, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(Exception):
            fs.rm(path)
