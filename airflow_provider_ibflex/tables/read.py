"""Read one table of every statement converted under a destination, through the manifests.

The manifests are the commit points of the conversions (``publish``): reading through them never
sees a set half-published, a killed run's leftovers or a previous run's files still being retired.
The files' schemas are unified by column name (one name has one type in every file the converter
writes), so a column that only some statements have comes back null for the others. A Delta
destination holds one table for every statement: its latest version is read.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
from pyarrow.fs import FSSpecHandler, PyFileSystem

from airflow_provider_ibflex.tables import values as typing_
from airflow_provider_ibflex.tables.collect import CARRIED_KINDS, ROW_NUMBER, SHA256
from airflow_provider_ibflex.tables.convert import locate
from airflow_provider_ibflex.tables.errors import FlexTablesError
from airflow_provider_ibflex.tables.layout import MANIFEST_FOLDER


def manifests(destination: Any) -> dict[str, dict[str, Any]]:
    """Every published manifest under a destination, by conversion name, in name order.

    :param destination: the converter's destination (URL, local path, or ObjectStoragePath).
    """
    fs, root = locate(destination)
    folder = posixpath.join(root.rstrip("/"), MANIFEST_FOLDER)
    fs.invalidate_cache(folder)
    try:
        listed = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for item in sorted(listed, key=lambda entry: entry["name"]):
        path = fs._strip_protocol(item["name"])
        if item.get("type") != "file" or not path.endswith(".json"):
            continue
        with fs.open(path, "rb") as handle:
            manifest = json.loads(handle.read())
        if isinstance(manifest, dict) and isinstance(manifest.get("tables"), dict):
            found[posixpath.basename(path)[: -len(".json")]] = manifest
    return found


def read_table(
    destination: Any,
    table: str,
    *,
    names: Iterable[str] | None = None,
    columns: list[str] | None = None,
    filter: ds.Expression | None = None,
    as_dataset: bool = False,
) -> pa.Table | ds.Dataset:
    """One table (``Trades/Trade``, ``AccountInformation``, ...) of every statement converted under
    ``destination``, as one Arrow table (or dataset) with the files' schemas unified.

    :param destination: the converter's destination (URL, local path, or ObjectStoragePath).
    :param table: the table's name.
    :param names: only these conversions (the operator's ``name``, e.g. ``2026-11-20-123456``); in a
        Delta table, the rows of their statements as the table holds them now.
    :param columns: only these columns.
    :param filter: a pyarrow dataset filter, e.g. ``pc.field("accountId") == "U1234567"``.
    :param as_dataset: return the ``pyarrow.dataset.Dataset`` instead of reading it.
    """
    fs, root = locate(destination)
    published = manifests(destination)
    wanted = None if names is None else set(names)
    chosen = {
        name: manifest
        for name, manifest in published.items()
        if (wanted is None or name in wanted) and table in manifest["tables"]
    }
    entries = [manifest["tables"][table] for manifest in chosen.values()]
    if not entries:
        known = sorted({name for manifest in published.values() for name in manifest["tables"]})
        where = f"tables there: {', '.join(known)}" if known else "no conversion was published there"
        raise FlexTablesError(f"no statement converted under {root} has the table {table!r} ({where})")
    if any(manifest.get("format") == "delta" for manifest in chosen.values()):
        return _delta_table(fs, chosen, table, names is not None, columns, filter, as_dataset)
    filesystem = PyFileSystem(FSSpecHandler(fs))
    parts: list[ds.Dataset] = []
    for output_format in ("parquet", "csv"):
        paths = [fs._strip_protocol(entry["uri"]) for entry in entries if _format(entry) == output_format]
        if paths:
            parts.append(_dataset(paths, output_format, filesystem, entries))
    schema = pa.unify_schemas([part.schema for part in parts])
    dataset = ds.dataset([part.replace_schema(schema) for part in parts]) if len(parts) > 1 else parts[0]
    if as_dataset:
        return dataset
    return dataset.to_table(columns=columns, filter=filter)


def _delta_table(
    fs: Any,
    chosen: dict[str, dict[str, Any]],
    table: str,
    only_chosen: bool,
    columns: list[str] | None,
    filter: ds.Expression | None,
    as_dataset: bool,
) -> pa.Table | ds.Dataset:
    """A Delta table's latest version (every statement merged into it), or only the rows of the
    chosen conversions' statements."""
    from deltalake import DeltaTable

    from airflow_provider_ibflex.tables.delta import storage_options

    latest = chosen[max(chosen)]["tables"][table]
    dataset = DeltaTable(latest["uri"], storage_options=storage_options(fs) or None).to_pyarrow_dataset()
    if only_chosen:
        shas = [manifest["source"]["sha256"] for manifest in chosen.values()]
        mine = ds.field(SHA256).isin(shas)
        filter = mine if filter is None else filter & mine
    if as_dataset:
        return dataset if filter is None else dataset.filter(filter)
    return dataset.to_table(columns=columns, filter=filter)


def _format(entry: dict[str, Any]) -> str:
    return "csv" if str(entry["uri"]).endswith(".csv") else "parquet"


def _dataset(
    paths: list[str], output_format: str, filesystem: Any, entries: list[dict[str, Any]]
) -> ds.Dataset:
    if output_format == "parquet":
        files = ds.dataset(paths, format="parquet", filesystem=filesystem)
        schema = pa.unify_schemas([fragment.physical_schema for fragment in files.get_fragments()])
        return ds.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
    # CSV carries no types: they follow from the column names, as the converter wrote them.
    names = list(dict.fromkeys(c["name"] for e in entries if _format(e) == "csv" for c in e["columns"]))
    schema = pa.schema([pa.field(name, _csv_type(name)) for name in names])
    options = ds.CsvFileFormat(
        convert_options=pa_csv.ConvertOptions(
            column_types=schema, strings_can_be_null=True, quoted_strings_can_be_null=False
        )
    )
    return ds.dataset(paths, schema=schema, format=options, filesystem=filesystem)


def _csv_type(name: str) -> pa.DataType:
    if name.endswith(typing_.RAW_SUFFIX):
        return pa.string()
    if name == ROW_NUMBER:
        return pa.int64()
    return typing_.plan_column(name, CARRIED_KINDS.get(name)).type
