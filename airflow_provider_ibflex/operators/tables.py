"""IBFlexStatementToTablesOperator: turn a landed statement into typed per-section tables;
IBFlexDeltaMaintenanceOperator: compact and vacuum the Delta tables.

Runs the converter (``airflow_provider_ibflex.tables``) as a task: the statement is read from object
storage as a stream and the tables (Parquet, CSV, or Delta Lake tables holding every statement) and
their manifest are written under a destination prefix. Needs pyarrow (and deltalake for Delta):
``pip install 'airflow-provider-ibflex[tables]'``.
"""

from __future__ import annotations

import datetime
import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    Asset,
    BaseOperator,
    Context,
    ObjectStoragePath,
)
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

from airflow_provider_ibflex.protocol import FlexInputError
from airflow_provider_ibflex.storage import report_lineage
from airflow_provider_ibflex.tables.layout import split_table_name, table_folder

TABLE_EXTRA = "ibflex_table"


def table_uri(destination: str, table: str, output_format: str = "parquet") -> str:
    """Where a table lands under a destination prefix (its folder, for an Asset a DAG schedules on).

    :param destination: the operator's destination, e.g. ``s3://bucket/ibflex/tables``.
    :param table: the table's name, e.g. ``Trades/Trade`` or ``AccountInformation``.
    :param output_format: the operator's ``output_format`` (Delta tables live at
        ``<destination>/<Section>/<Element>``).
    """
    section, element = split_table_name(table)
    if output_format == "delta":
        return posixpath.join(destination.rstrip("/"), section, element)
    return table_folder(destination, section, element)


def table_asset(
    table: str, destination: str | None = None, output_format: str = "parquet", **kwargs: Any
) -> Asset:
    """An Asset for one table, to put in the operator's ``outlets`` and schedule DAGs on.

    Its URI is the table's folder under ``destination``, or ``ibflex://tables/<Section>/<Element>``
    (``ibflex://delta/...`` for Delta) when the destination is only known at run time (templated);
    either way the operator recognises
    it (by its ``ibflex_table`` extra) and its events carry the table's rows and file (for Delta,
    the table's URI and its new version).

    :param table: the table's name, e.g. ``Trades/Trade``.
    :param destination: the operator's destination, if it is fixed.
    :param output_format: the operator's ``output_format``.
    :param kwargs: more Asset arguments (``name``, ``group``, ...).
    """
    section, element = split_table_name(table)
    scheme = "ibflex://delta" if output_format == "delta" else "ibflex://tables"
    uri = table_uri(destination, table, output_format) if destination else f"{scheme}/{section}/{element}"
    extra = {**kwargs.pop("extra", {}), TABLE_EXTRA: table}
    if not AIRFLOW_V_3_0_PLUS:  # a Dataset: no name or group (Airflow 2 knows one by its URI alone)
        kwargs.pop("name", None)
        kwargs.pop("group", None)
    return Asset(uri=uri, extra=extra, **kwargs)


def default_name(uri: str, context: Context) -> str:
    """The run's date and the statement's file name without its extension (just the latter for a
    run without a logical date).

    :param uri: the statement's URL or path.
    :param context: the task's context.
    """
    stem = posixpath.basename(uri.rstrip("/")).rsplit(".", 1)[0]
    day = context.get("ds")
    return f"{day}-{stem}" if day else stem


class IBFlexStatementToTablesOperator(BaseOperator):
    """Convert a landed Flex statement into one typed table per (section, row element).

    Tables land under ``destination`` as ``section=<Section>/element=<Element>/<name>.<run>.<format>``,
    the layout partition-aware engines (DuckDB, Spark, pyarrow datasets) read as columns; the manifest
    goes last to ``_manifests/<name>.json``, publishing the set (a rerun's files replace the previous
    run's only then), and is the task's XCom (never rows). Outlets get Asset
    events: one made with ``table_asset`` carries its table's row count and file, any other the
    manifest's summary. Input that cannot be converted without loss fails the task without retries
    and writes nothing.

    :param statement: the landed statement: the sensor's XCom (its ``.output``, a dict with ``uri``
        and ``sha256``, which is then checked), or a URL or path (templated).
    :param destination: the folder the tables go under, e.g. ``s3://bucket/ibflex/tables``
        (templated).
    :param output_format: ``parquet`` (default), ``csv``, or ``delta``: one Delta Lake table per
        (section, row element) at ``<destination>/<Section>/<Element>`` holding every statement
        converted there, rows merged by natural key or replaced per account and period.
    :param merge_keys: Delta only: natural keys by table, over the catalogue's (templated), e.g.
        ``{"Trades/Trade": ["transactionID"]}``; an empty list replaces that table per period.
    :param delta_storage_options: Delta only: delta-rs storage options, over those the destination's
        connection gives (e.g. ``{"AWS_S3_LOCKING_PROVIDER": "dynamodb", ...}``).
    :param name: the files' name (templated); by default the run's date and the statement's file
        name without its extension (``2026-11-20-100001``), so statements landed as
        ``<date>/<query>.xml`` day after day do not overwrite each other's tables, and a rerun
        replaces its own.
    :param previous_manifest: an earlier manifest (URL, path or dict), to report the sections,
        tables and columns that are new since (templated).
    :param source_conn_id: the storage connection to read the statement with, if its store needs one.
    :param destination_conn_id: the storage connection to write the tables with.
    """

    template_fields: Sequence[str] = ("statement", "destination", "name", "previous_manifest", "merge_keys")
    ui_color = "#d81f26"

    def __init__(
        self,
        *,
        statement: Mapping[str, Any] | str | Any,
        destination: str,
        output_format: str = "parquet",
        name: str | None = None,
        previous_manifest: Mapping[str, Any] | str | None = None,
        source_conn_id: str | None = None,
        destination_conn_id: str | None = None,
        merge_keys: Mapping[str, Sequence[str]] | None = None,
        delta_storage_options: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.statement = statement
        self.destination = destination
        self.output_format = output_format
        self.merge_keys = merge_keys
        self.delta_storage_options = delta_storage_options
        self._manifest: dict[str, Any] | None = None
        self.name = name
        self.previous_manifest = previous_manifest
        self.source_conn_id = source_conn_id
        self.destination_conn_id = destination_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            from airflow_provider_ibflex.tables import FlexTablesError, convert_statement
        except ImportError as exc:
            raise AirflowFailException(
                f"{self.task_id}: the tables converter needs pyarrow ({exc}); install "
                "'airflow-provider-ibflex[tables]' where tasks run."
            ) from None
        try:
            uri, sha256 = self._source()
            source = ObjectStoragePath(uri, conn_id=self.source_conn_id)
            destination = ObjectStoragePath(self._destination(), conn_id=self.destination_conn_id)
            manifest = convert_statement(
                source,
                destination,
                output_format=self.output_format,
                name=self.name or default_name(uri, context),
                previous_manifest=self._previous(),
                expected_sha256=sha256,
                merge_keys=self.merge_keys,
                delta_storage_options=self.delta_storage_options,
            )
        except (FlexTablesError, FlexInputError) as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None
        except ImportError as exc:  # deltalake, for output_format="delta"
            raise AirflowFailException(
                f"{self.task_id}: {exc}; install 'airflow-provider-ibflex[tables]' where tasks run."
            ) from None
        self._report(context, manifest)
        self._manifest = manifest
        return manifest

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the statement read (with its sha256) and each table written, with its schema
        and the statement's rows (see ``lineage``).

        :param task_instance: the finished task instance.
        """
        from airflow_provider_ibflex.lineage import operator_lineage, statement_dataset, table_datasets

        manifest = self._manifest
        if manifest is None:
            return None
        source = {**manifest["source"], "uri": manifest["source"]["uri"]}
        folders = {
            name: table_uri(manifest["destination"], name, self.output_format) for name in manifest["tables"]
        }
        return operator_lineage([statement_dataset(source, output=False)], table_datasets(manifest, folders))

    def _source(self) -> tuple[str, str | None]:
        statement = self.statement
        if isinstance(statement, Mapping):
            uri = statement.get("uri")
            if not isinstance(uri, str) or not uri:
                raise FlexInputError(
                    f"statement {dict(statement)!r} has no 'uri'; pass the sensor's XCom "
                    "(e.g. statement=wait_for_statement.output) or the statement's URL"
                )
            sha = statement.get("sha256")
            return uri, sha if isinstance(sha, str) and sha else None
        if isinstance(statement, str) and statement.strip():
            text = statement.strip()
            if text.startswith("{"):  # the sensor's XCom rendered as text by a template
                try:
                    self.statement = json.loads(text)
                except ValueError:
                    self.statement = text
                else:
                    return self._source()
            return text, None
        raise FlexInputError(
            f"statement must be the sensor's XCom or a URL, got {statement!r}; pass e.g. "
            "statement=wait_for_statement.output"
        )

    def _destination(self) -> str:
        text = str(self.destination or "").strip()
        if not text:
            raise FlexInputError("destination is empty; give the folder the tables go under")
        return text.rstrip("/")

    def _previous(self) -> Mapping[str, Any] | None:
        previous = self.previous_manifest
        if previous is None or previous == "":
            return None
        if isinstance(previous, Mapping):
            return previous
        path = ObjectStoragePath(str(previous), conn_id=self.destination_conn_id)
        if not path.exists():
            self.log.info("No previous manifest at %s: every table is new", previous)
            return {}
        try:
            loaded = json.loads(path.read_text())
        except ValueError as exc:
            raise FlexInputError(f"previous_manifest {previous!r} is not JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise FlexInputError(f"previous_manifest {previous!r} is not a manifest (a JSON object)")
        return loaded

    def _report(self, context: Context, manifest: dict[str, Any]) -> None:
        tables: dict[str, Any] = manifest["tables"]
        by_folder = {table_uri(self._destination(), name, self.output_format): name for name in tables}
        if self.output_format != "delta":
            for entry in tables.values():
                report_lineage(ObjectStoragePath(entry["uri"], conn_id=self.destination_conn_id))
        for outlet in self.outlets or []:
            if not isinstance(outlet, Asset):
                continue
            extra = context["outlet_events"][outlet].extra
            table = (outlet.extra or {}).get(TABLE_EXTRA) or by_folder.get(outlet.uri.rstrip("/"))
            if table in tables:
                extra.update(table=table, rows=tables[table]["rows"], uri=tables[table]["uri"])
                if "version" in tables[table]:
                    extra["version"] = tables[table]["version"]
            else:
                extra.update(tables={name: entry["rows"] for name, entry in tables.items()})
            extra["manifest"] = manifest.get("uri")
        added = manifest.get("changes", {}).get("new_columns")
        if added:
            # Readers that take a folder's schema from its first (older) file would not see these.
            self.log.warning(
                "Columns new since the previous manifest: %s. Read the tables with read_table() or by "
                "column name (DuckDB union_by_name) to see them beside older files.",
                added,
            )
        self.log.info(
            "Wrote %d rows in %d tables under %s; manifest %s",
            manifest.get("rows", 0),
            len(tables),
            self._destination(),
            manifest.get("uri"),
        )


class IBFlexDeltaMaintenanceOperator(BaseOperator):
    """Compact the Delta tables the converter writes and remove the files old versions needed.

    Schedule it as suits the tables' growth (weekly, say): daily merges leave many small files, which
    ``optimize`` rewrites into few large ones (a new version, the same rows), and every version keeps
    the files it replaced until ``vacuum`` removes them, after which those versions cannot be read
    (time travel reaches back ``vacuum_retention`` at least). The task's XCom lists what was done.

    :param destination: the converter's destination (templated).
    :param tables: the tables to maintain (``Trades/Trade``, ...); all the manifests name by default.
    :param optimize: compact small files.
    :param vacuum_retention: remove files that no version younger than this needs; None keeps all.
    :param destination_conn_id: the storage connection.
    :param delta_storage_options: delta-rs storage options, as for the converter.
    """

    template_fields: Sequence[str] = ("destination",)
    ui_color = "#d81f26"

    def __init__(
        self,
        *,
        destination: str,
        tables: Sequence[str] | None = None,
        optimize: bool = True,
        vacuum_retention: datetime.timedelta | None = datetime.timedelta(days=7),
        destination_conn_id: str | None = None,
        delta_storage_options: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.destination = destination
        self.tables = tables
        self.optimize = optimize
        self.vacuum_retention = vacuum_retention
        self.destination_conn_id = destination_conn_id
        self.delta_storage_options = delta_storage_options

    def execute(self, context: Context) -> list[dict[str, Any]]:
        try:
            from airflow_provider_ibflex.tables import delta, manifests
            from airflow_provider_ibflex.tables.convert import locate
        except ImportError as exc:
            raise AirflowFailException(
                f"{self.task_id}: Delta maintenance needs deltalake ({exc}); install "
                "'airflow-provider-ibflex[tables]' where tasks run."
            ) from None
        destination = ObjectStoragePath(str(self.destination).rstrip("/"), conn_id=self.destination_conn_id)
        fs, _ = locate(destination)
        options = delta.storage_options(fs, self.delta_storage_options)
        found: dict[str, str] = {}
        for manifest in manifests(destination).values():
            if manifest.get("format") == "delta":
                found |= {name: entry["uri"] for name, entry in manifest["tables"].items()}
        wanted = list(self.tables) if self.tables is not None else sorted(found)
        missing = [name for name in wanted if name not in found]
        if missing:
            raise AirflowFailException(f"{self.task_id}: no Delta table {missing} under {self.destination}")
        hours = None if self.vacuum_retention is None else self.vacuum_retention.total_seconds() / 3600
        done = []
        for name in wanted:
            result = delta.maintain(found[name], options, self.optimize, hours)
            self.log.info("%s: %s", name, result)
            done.append({"table": name, **{k: v for k, v in result.items() if k != "optimize"}})
        return done
