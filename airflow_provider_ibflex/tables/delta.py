"""A statement's tables written into Delta Lake tables with delta-rs: one table of every statement ever
converted per (section, row element), correct after every run.

Each table lives at ``<destination>/<Section>/<Element>`` (``AccountInformation`` at
``<destination>/AccountInformation/AccountInformation``: tables never nest, so vacuuming one never
touches another). Its schema is the converter's (``values``), with one exception Delta forces: Delta
has no time-of-day type, so times are written as ``HH:MM:SS`` text. A column that appears later is
added by schema evolution; history is never rewritten.

Every row carries its statement's identity (account, period dates, ``statementWhenGenerated`` and the
source's ``statementSha256``), and each table is written in one commit by its rule (``keys``):

- ``key``: one MERGE on the natural key: a row is inserted, or replaces the row with its key if its
  statement is at least as new; a row without a key is matched by its place in its statement, and
  such rows of its statement's period that the statement no longer has are deleted;
- ``period``: the rows of each (account, period) the statement covers replace those there, in one
  overwrite with a predicate.

Either way a statement older than what a table holds for its (account, period) changes nothing there:
backfills can come in any order. Converting a statement again changes no value. Two conversions at
once into one table conflict at commit (delta-rs detects it) and the later one is retried.
"""

from __future__ import annotations

import datetime
import logging
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import tenacity

from airflow_provider_ibflex.atomic import protocol_of
from airflow_provider_ibflex.tables.errors import FlexTablesError
from airflow_provider_ibflex.tables.keys import Rule

log = logging.getLogger(__name__)
ACCOUNT, FROM, TO, WHEN = "accountId", "statementFromDate", "statementToDate", "statementWhenGenerated"
# How often a commit that lost to another writer's is tried again.
COMMIT_ATTEMPTS = 12


def table_location(fs: Any, root: str, section: str, element: str) -> str:
    """The Delta table's URI as delta-rs takes it (``s3://bucket/key``, or a local path).

    :param fs: the destination's fsspec filesystem.
    :param root: the destination's path on it.
    :param section: the table's section.
    :param element: its row element.
    """
    path = posixpath.join(root.rstrip("/"), section, element)
    protocol = protocol_of(fs)
    if protocol in ("", "file", "local"):
        return path
    return fs.unstrip_protocol(path)


def storage_options(fs: Any, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """delta-rs's storage options for an fsspec filesystem: S3 credentials, endpoint and region taken
    from s3fs, and conditional puts so that concurrent commits are safe on S3. ``extra`` wins.

    :param fs: the destination's fsspec filesystem.
    :param extra: options given by the DAG author (``delta_storage_options``).
    """
    options: dict[str, str] = {}
    if protocol_of(fs) in ("s3", "s3a"):
        client = dict(getattr(fs, "client_kwargs", None) or {})
        endpoint = getattr(fs, "endpoint_url", None) or client.get("endpoint_url")
        found = {
            "AWS_ACCESS_KEY_ID": getattr(fs, "key", None),
            "AWS_SECRET_ACCESS_KEY": getattr(fs, "secret", None),
            "AWS_SESSION_TOKEN": getattr(fs, "token", None),
            "AWS_REGION": client.get("region_name"),
            "AWS_ENDPOINT_URL": endpoint,
        }
        options |= {name: str(value) for name, value in found.items() if value}
        if endpoint and str(endpoint).startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
        # S3 has no atomic rename: a commit is a conditional put (If-None-Match), which S3 honours.
        options["conditional_put"] = "etag"
    return options | dict(extra or {})


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """The converter's schema as Delta can hold it: times of day as text.

    :param schema: the table's Arrow schema.
    """
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_time(f.type) else f for f in schema])


def to_delta(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A typed batch as Delta holds it (``delta_schema``).

    :param batch: a batch of the converter's typed columns.
    :param schema: ``delta_schema`` of its schema.
    """
    # Flex writes times to the second: whole seconds, so the text is exact.
    columns = [
        pc.strftime(pc.cast(column, pa.time32("s")), format="%H:%M:%S")
        if pa.types.is_time(column.type)
        else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class Period:
    """An (account, statement period) of the rows, with the statement's generation time.

    :param account: the account.
    :param start: the period's first day.
    :param end: its last day.
    :param generated: when its statement was generated.
    """

    account: str | None
    start: datetime.date | None
    end: datetime.date | None
    generated: datetime.datetime | None

    def predicate(self, alias: str = "") -> str:
        """A SQL predicate matching this period's rows (with ``alias.`` before each column)."""
        prefix = f"{alias}." if alias else ""
        return (
            "("
            + " AND ".join(
                _equals(prefix + _quote(column), value)
                for column, value in ((ACCOUNT, self.account), (FROM, self.start), (TO, self.end))
            )
            + ")"
        )


@dataclass(frozen=True)
class Profile:
    """What a statement's rows of one table are, found before they are written.

    :param periods: their (account, period, generation time).
    :param keyless: how many have no value for the table's key (``key`` rule only).
    :param bounds: each key column's smallest and largest value among them (``key`` rule only).
    """

    periods: list[Period]
    keyless: int = 0
    bounds: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def within_bounds(self, alias: str) -> str:
        """A SQL predicate that only rows whose keys lie within the statement's bounds meet: with it
        a MERGE reads only the table's files whose statistics overlap them, not the whole history."""
        return " AND ".join(
            f"{alias}.{_quote(column)} >= {_literal(lo)} AND {alias}.{_quote(column)} <= {_literal(hi)}"
            for column, (lo, hi) in self.bounds.items()
        )


def profile(batches: Iterator[pa.RecordBatch], rule: Rule) -> Profile:
    """The rows' periods, and how many lack a key.

    :param batches: the rows, typed.
    :param rule: the table's rule.
    """
    found: dict[tuple[Any, ...], Period] = {}
    keyless = 0
    bounds: dict[str, tuple[Any, Any]] = {}
    for batch in batches:
        table = pa.Table.from_batches([batch]).select([ACCOUNT, FROM, TO, WHEN])
        for row in table.group_by([ACCOUNT, FROM, TO, WHEN], use_threads=False).aggregate([]).to_pylist():
            period = Period(row[ACCOUNT], row[FROM], row[TO], row[WHEN])
            found[(period.account, period.start, period.end, period.generated)] = period
        if rule.kind == "key":
            keyed = _keyed(batch, rule)
            keyless += batch.num_rows - int(pc.sum(pc.cast(keyed, pa.int64())).as_py() or 0)
            _widen(bounds, batch.filter(keyed), rule.keys)
    return Profile(list(found.values()), keyless, bounds)


def _widen(bounds: dict[str, tuple[Any, Any]], batch: pa.RecordBatch, columns: tuple[str, ...]) -> None:
    if not batch.num_rows:
        return
    for column in columns:
        values = batch.column(column)
        if not (pa.types.is_string(values.type) or pa.types.is_date32(values.type)):
            continue  # the keys IB gives are text and dates; other types are not bounded
        extremes = pc.min_max(values).as_py()
        lo, hi = extremes["min"], extremes["max"]
        if column in bounds:
            lo, hi = min(lo, bounds[column][0]), max(hi, bounds[column][1])
        bounds[column] = (lo, hi)


def _keyed(batch: pa.RecordBatch, rule: Rule) -> pa.Array:
    mask = None
    for column in rule.keys:
        values = batch.column(column)
        there = pc.and_(pc.is_valid(values), pc.not_equal(pc.cast(values, pa.string()), ""))
        mask = there if mask is None else pc.and_(mask, there)
    return pc.fill_null(mask, False) if mask is not None else pa.array([True] * batch.num_rows)


@dataclass(frozen=True)
class Held:
    """What a table already holds of a statement's periods.

    :param stale: the (account, start, end) for which it holds a newer statement's rows.
    :param keyless: whether it holds rows without a key in those periods.
    """

    stale: set[tuple[Any, Any, Any]]
    keyless: bool


def held(dt: Any, periods: list[Period], rule: Rule) -> Held:
    """What the table holds of ``periods``: one query over a few columns.

    :param dt: the DeltaTable.
    :param periods: the statement's periods.
    :param rule: the table's rule.
    """
    from deltalake import QueryBuilder

    names = [field.name for field in dt.schema().fields]
    if WHEN not in names:
        return Held(set(), False)
    # Only the statement's periods: the files' statistics then spare reading the rest of the history.
    where = f"WHERE {' OR '.join(p.predicate() for p in periods)}" if periods else ""
    keys = [k for k in rule.keys if k in names] if rule.kind == "key" else []
    unkeyed = " AND ".join(f"NOT {_present(_quote(k))}" for k in keys) if len(keys) == len(rule.keys) else ""
    counted = f"sum(CASE WHEN {unkeyed} THEN 1 ELSE 0 END)" if keys and unkeyed else "0"
    # Every name is quoted by _quote and every value by _literal: nothing from the statement is spliced.
    query = (
        f"SELECT {_quote(ACCOUNT)} AS account, {_quote(FROM)} AS start, {_quote(TO)} AS end_, "  # noqa: S608
        f"max({_quote(WHEN)}) AS newest, {counted} AS keyless FROM held {where} GROUP BY 1, 2, 3"
    )
    rows = pa.table(QueryBuilder().register("held", dt).execute(query)).to_pylist()
    newest = {(row["account"], row["start"], row["end_"]): row for row in rows}
    stale, keyless = set(), False
    for period in periods:
        there = newest.get((period.account, period.start, period.end))
        if there is None:
            continue
        if period.generated is not None and there["newest"] > period.generated:
            stale.add((period.account, period.start, period.end))
        elif there["keyless"]:
            keyless = True
    return Held(stale, keyless)


def write_table(
    location: str,
    options: dict[str, str],
    schema: pa.Schema,
    batches: Callable[[], Iterator[pa.RecordBatch]],
    rule: Rule,
    metadata: dict[str, str],
) -> dict[str, Any]:
    """Write one table's rows into its Delta table in one commit, by ``rule``; retried when another
    writer committed first. Returns the new ``version`` (None when the table already held newer
    statements for every period) and delta-rs's metrics.

    :param location: the table's URI (``table_location``).
    :param options: delta-rs storage options (``storage_options``).
    :param schema: the rows' Arrow schema (the converter's).
    :param batches: a fresh iterator of the typed rows for each attempt.
    :param rule: how the rows meet the table's (``keys.rule_for``).
    :param metadata: recorded with the commit (the statement's name, run and sha256).
    """
    from deltalake.exceptions import CommitFailedError

    target = delta_schema(schema)
    found = profile(batches(), rule)
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(CommitFailedError),
        stop=tenacity.stop_after_attempt(COMMIT_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=0.2, max=5) + tenacity.wait_random(0, 0.5),
        before_sleep=lambda state: log.info("Commit to %s lost to another writer's; trying again", location),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            return _write_once(location, options, target, batches, rule, metadata, found)
    raise AssertionError("unreachable")  # pragma: no cover


def _write_once(
    location: str,
    options: dict[str, str],
    target: pa.Schema,
    batches: Callable[[], Iterator[pa.RecordBatch]],
    rule: Rule,
    metadata: dict[str, str],
    found: Profile,
) -> dict[str, Any]:
    from deltalake import CommitProperties, DeltaTable, write_deltalake

    dt = _open_or_create(location, options, target)
    there = held(dt, found.periods, rule)
    stale = there.stale
    periods = found.periods
    fresh = [p for p in periods if (p.account, p.start, p.end) not in stale]
    if not fresh:
        log.info("%s already holds newer statements for every period of this one: unchanged", location)
        return {"version": None, "skipped_periods": len(periods)}

    def rows() -> Iterator[pa.RecordBatch]:
        for batch in batches():
            batch = to_delta(batch, target)
            yield _without(batch, stale) if stale else batch

    source = pa.RecordBatchReader.from_batches(target, rows())
    commit = CommitProperties(custom_metadata=metadata)
    within = " OR ".join(p.predicate() for p in fresh)
    if rule.kind == "period":
        write_deltalake(
            dt,
            source,
            mode="overwrite",
            predicate=within,
            schema_mode="merge",
            commit_properties=commit,
        )
        metrics: dict[str, Any] = {}
    else:
        keys = rule.keys
        keyed = " AND ".join(_present("s." + _quote(k)) for k in keys)
        same_key = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in keys)
        target_unkeyed = " AND ".join(f"NOT {_present('t.' + _quote(k))}" for k in keys)
        predicate = f"{keyed} AND {same_key}"
        if found.bounds:
            predicate = f"{predicate} AND {found.within_bounds('t')}"
        if found.keyless:
            # Rows without a key are matched by their place in their statement.
            unkeyed = " AND ".join(f"NOT {_present('s.' + _quote(k))}" for k in keys)
            same_place = " AND ".join(
                f"(t.{_quote(c)} IS NOT DISTINCT FROM s.{_quote(c)})"
                for c in (ACCOUNT, FROM, TO, "rowNumber")
            )
            predicate = f"({predicate}) OR ({unkeyed} AND {target_unkeyed} AND {same_place})"
        merger = dt.merge(
            source,
            predicate,
            source_alias="s",
            target_alias="t",
            merge_schema=True,
            commit_properties=commit,
        )
        merger = merger.when_matched_update_all(predicate=f"s.{_quote(WHEN)} >= t.{_quote(WHEN)}")
        merger = merger.when_not_matched_insert_all()
        if there.keyless:
            # Keyless rows of these periods that the statement no longer has (only asked for when the
            # table holds some: the clause makes the merge read every file of the table).
            periods_here = " OR ".join(p.predicate("t") for p in fresh)
            merger = merger.when_not_matched_by_source_delete(
                predicate=f"{target_unkeyed} AND ({periods_here})"
            )
        metrics = merger.execute()
    version = DeltaTable(location, storage_options=options or None).version()
    return {"version": version, "skipped_periods": len(stale), "metrics": metrics}


# Statistics for every column, not Delta's default first 32: the keys sit further right (a Trade's
# transactionID is its 41st column), and a MERGE prunes the table's files only by columns that have
# them. Without, each merge reads the whole history into memory.
TABLE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "-1"}


def _open_or_create(location: str, options: dict[str, str], schema: pa.Schema) -> Any:
    """The table at ``location``, created empty (with ``schema``) if there is none yet: every write
    then merges or replaces, so two writers creating it at once cannot both append."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError, TableNotFoundError

    if not DeltaTable.is_deltatable(location, storage_options=options or None):
        try:
            DeltaTable.create(
                location,
                schema,
                mode="ignore",
                storage_options=options or None,
                configuration=TABLE_PROPERTIES,
            )
        except (CommitFailedError, OSError):
            pass  # another writer created it first
        except Exception as exc:  # delta-rs reports a lost race in several ways
            if not DeltaTable.is_deltatable(location, storage_options=options or None):
                raise FlexTablesError(f"could not create the Delta table {location}: {exc}") from exc
    try:
        return DeltaTable(location, storage_options=options or None)
    except TableNotFoundError as exc:
        raise FlexTablesError(f"the Delta table {location} could not be opened: {exc}") from exc


def check_unique(batches: Iterator[pa.RecordBatch], rule: Rule) -> None:
    """A key that repeats within one statement would make the MERGE ambiguous: refuse it clearly
    (before any table is written).

    :param batches: the table's typed rows.
    :param rule: its rule (nothing to check unless ``key``).
    """
    if rule.kind != "key":
        return
    parts = [pa.Table.from_batches([b]).select(list(rule.keys)).filter(_keyed(b, rule)) for b in batches]
    if not parts:
        return
    keyed = pa.concat_tables(parts)
    counts = keyed.group_by(list(rule.keys), use_threads=False).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1))
    if repeated.num_rows:
        example = {k: v for k, v in repeated.slice(0, 1).to_pylist()[0].items() if k != "count_all"}
        raise FlexTablesError(
            f"the key {list(rule.keys)} repeats within this statement ({repeated.num_rows} values, e.g. "
            f"{example}), so it cannot say which row a merge replaces; nothing was written. Set "
            "merge_keys for this table to columns that are unique, or [] to replace it per period."
        )


def _without(batch: pa.RecordBatch, stale: set[tuple[Any, Any, Any]]) -> pa.RecordBatch:
    keep = None
    for account, start, end in stale:
        match = pc.and_(
            pc.and_(_eq(batch.column(ACCOUNT), account), _eq(batch.column(FROM), start)),
            _eq(batch.column(TO), end),
        )
        keep = pc.invert(match) if keep is None else pc.and_(keep, pc.invert(match))
    return batch.filter(keep) if keep is not None else batch


def _eq(column: pa.Array, value: Any) -> pa.Array:
    if value is None:
        return pc.is_null(column)
    return pc.fill_null(pc.equal(column, pa.scalar(value, column.type)), False)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _present(column: str) -> str:
    return f"({column} IS NOT NULL AND CAST({column} AS VARCHAR) <> '')"


def _equals(column: str, value: Any) -> str:
    if value is None:
        return f"{column} IS NULL"
    return f"{column} = {_literal(value)}"


def _literal(value: Any) -> str:
    """A SQL literal: text from the statement is quoted, never spliced in."""
    if isinstance(value, datetime.date):
        return f"DATE '{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def maintain(
    location: str, options: dict[str, str], optimize: bool, vacuum_hours: float | None
) -> dict[str, Any]:
    """Compact a Delta table's small files and remove files no version newer than ``vacuum_hours``
    needs (older versions can no longer be read after that).

    :param location: the table's URI.
    :param options: delta-rs storage options.
    :param optimize: compact small files into larger ones (a new version, the same rows).
    :param vacuum_hours: remove files unreferenced for this long; None keeps every file.
    """
    from deltalake import DeltaTable

    dt = DeltaTable(location, storage_options=options or None)
    done: dict[str, Any] = {"uri": location}
    if optimize:
        done["optimize"] = dt.optimize.compact()
    if vacuum_hours is not None:
        removed = dt.vacuum(
            retention_hours=int(vacuum_hours), dry_run=False, enforce_retention_duration=False
        )
        done["vacuumed_files"] = len(removed)
    done["version"] = dt.version()
    return done
