"""How a Flex attribute's text becomes a typed column, as pure functions over Arrow arrays.

A column is typed only where its type is certain: its name is a Flex attribute of known type
(``catalogue``) and it is not an identifier; unknown attributes stay text. Within a typed column,
the null spellings (``""``, ``-``, ``--``, ``N/A``) become null, and a value that does not fit the
type becomes null too while its raw text survives in a companion ``<name>__raw`` column. Everything
else stays the exact text.

Conversion runs in two passes over the same batches: ``observe`` gathers a ``ColumnStats`` per batch,
``decide`` turns the merged stats into a ``ColumnPlan``, and ``convert`` applies the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ibflex.tables import catalogue

NULL_SPELLINGS = ("", "-", "--", "N/A")
TRUE_SPELLINGS = ("Y", "Yes")
FALSE_SPELLINGS = ("N", "No")
RAW_SUFFIX = "__raw"
DECIMAL_PRECISION = 38

# Flex's date formats (query settings) with the regular expression that must match the whole value
# (strptime alone is lenient: it reads "2026112" as 2026-11-02).
DATE_FORMATS = (
    (r"\d{8}", "%Y%m%d"),
    (r"\d{4}-\d{2}-\d{2}", "%Y-%m-%d"),
    (r"\d{2}/\d{2}/\d{4}", "%m/%d/%Y"),
    (r"\d{2}/\d{2}/\d{2}", "%m/%d/%y"),
    (r"\d{2}-[A-Za-z]{3}-\d{2}", "%d-%b-%y"),
)
TIME_FORMATS = ((r"\d{6}", "%H%M%S"), (r"\d{2}:\d{2}:\d{2}", "%H:%M:%S"))
DATE_TIME_SEPARATORS = (";", ", ", ",", " ", "")  # ", " in statements of old


@dataclass(frozen=True)
class Format:
    """One way Flex writes a date, a time or both.

    :param pattern: a regular expression the whole value must match.
    :param strptime: the matching strptime format.
    :param has_date: whether it carries a date.
    :param has_time: whether it carries a time of day.
    """

    pattern: str
    strptime: str
    has_date: bool
    has_time: bool


def _formats() -> tuple[Format, ...]:
    both = [
        Format(date_re + re.escape(sep) + time_re, date_fmt + sep + time_fmt, True, True)
        for date_re, date_fmt in DATE_FORMATS
        for sep in DATE_TIME_SEPARATORS
        for time_re, time_fmt in TIME_FORMATS
    ]
    dates = [Format(pattern, fmt, True, False) for pattern, fmt in DATE_FORMATS]
    times = [Format(pattern, fmt, False, True) for pattern, fmt in TIME_FORMATS]
    return (*both, *dates, *times)


FORMATS = _formats()
_COMPILED = tuple((re.compile(f.pattern), f) for f in FORMATS)
DECIMAL_PATTERN = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_DECIMAL_RE = f"^{DECIMAL_PATTERN}$"
_IDENTIFIER_WORDS = ("conid", "cusip", "isin", "figi", "sedol", "securityid", "serialnumber", "account")


def temporal_format(value: str) -> Format | None:
    """The Flex format a single value is written in, if any.

    :param value: the attribute's text.
    """
    for compiled, fmt in _COMPILED:
        if compiled.fullmatch(value):
            return fmt
    return None


def is_identifier(name: str) -> bool:
    """Whether a column names an identifier, which stays text even when it looks like a number
    (a CUSIP such as ``037833100`` keeps its leading zero).

    :param name: the attribute's name.
    """
    lowered = name.lower()
    return lowered.endswith("id") or any(word in lowered for word in _IDENTIFIER_WORDS)


def declared_kind(name: str) -> str:
    """The kind of a column by its name: ``decimal``, ``temporal``, ``time``, ``boolean`` or ``string``.

    CSV headers (``TradePrice``, ``Buy/Sell``) are matched to the XML attribute names they stand for.

    :param name: the attribute's or CSV column's name.
    """
    if is_identifier(name):
        return "string"
    key = _catalogue_key(name)
    for kind, names in _KINDS:
        if key in names:
            return kind
    return "string"


def _catalogue_key(name: str) -> str:
    if name in _ALL_NAMES:
        return name
    plain = re.sub(r"[^0-9A-Za-z]", "", name).lower()
    return _LOWERED.get(plain, name)


_KINDS = (
    ("boolean", catalogue.BOOLEAN_NAMES),
    ("decimal", catalogue.DECIMAL_NAMES),
    ("temporal", catalogue.TEMPORAL_NAMES),
    ("time", catalogue.TIME_NAMES),
)
_ALL_NAMES = frozenset().union(*(names for _, names in _KINDS))
_LOWERED = {name.lower(): name for name in _ALL_NAMES}


@dataclass
class ColumnStats:
    """What one pass over a column's values found (merged over batches with ``merge``).

    :param kind: the declared kind.
    :param values: values present and not a null spelling.
    :param fits: of those, values that fit the kind.
    :param scale: the most digits after the decimal point (decimals).
    :param integer_digits: the most digits before it (decimals).
    :param formats: strptime formats seen (temporal and time columns).
    """

    kind: str
    values: int = 0
    fits: int = 0
    scale: int = 0
    integer_digits: int = 0
    formats: set[str] = field(default_factory=set)

    def merge(self, other: ColumnStats) -> ColumnStats:
        return replace(
            self,
            values=self.values + other.values,
            fits=self.fits + other.fits,
            scale=max(self.scale, other.scale),
            integer_digits=max(self.integer_digits, other.integer_digits),
            formats=self.formats | other.formats,
        )


@dataclass(frozen=True)
class ColumnPlan:
    """How a column is written.

    :param name: the column's name.
    :param type: its Arrow type (times in milliseconds, as Parquet stores them).
    :param kind: its kind (``string`` when it is kept as text).
    :param formats: strptime formats to try, in order (temporal and time columns).
    :param raw: whether a ``<name>__raw`` column keeps values that did not fit.
    """

    name: str
    type: pa.DataType
    kind: str = "string"
    formats: tuple[str, ...] = ()
    raw: bool = False


def present(values: pa.Array) -> pa.Array:
    """A mask of values that are there: not missing and not a null spelling.

    :param values: a string array.
    """
    return pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array(NULL_SPELLINGS))))


def observe(kind: str, values: pa.Array) -> ColumnStats:
    """Gather a column's stats from one batch of its values (first pass).

    :param kind: the column's declared kind (see ``declared_kind``).
    :param values: the batch's values, as strings (nulls where the attribute was absent).
    """
    stats = ColumnStats(kind)
    if kind == "string":
        return stats
    if kind == "decimal":
        # Numbers are most values, and no null spelling is one: only what does not match is
        # looked at again (a few values), so a decimal column costs one regex pass.
        fit = pc.fill_null(pc.match_substring_regex(values, _DECIMAL_RE), False)
        numbers = pc.filter(values, fit)
        stats.fits = len(numbers)
        stats.values = stats.fits + _count(present(pc.filter(values, pc.invert(fit))))
        if stats.fits:
            stats.scale, stats.integer_digits = _decimal_extent(numbers)
        return stats
    there = present(values)
    stats.values = _count(there)
    if not stats.values:
        return stats
    if kind == "boolean":
        stats.fits = _count(pc.and_(there, _boolean_spelling(values)))
    else:
        _, fit, used = _parse_distinct(values, kind, None)
        stats.fits = _count(fit)
        stats.formats = set(used)
    return stats


def decide(name: str, stats: ColumnStats) -> ColumnPlan:
    """Turn a column's merged stats into the plan it is written with (pure; no values needed).

    :param name: the column's name.
    :param stats: its stats over the whole table.
    """
    text = ColumnPlan(name, pa.string())
    if stats.kind == "string":
        return text
    # The declared type holds whatever the values are, so the schema does not change from day to
    # day; values that do not fit survive as text in the raw column.
    raw = stats.fits < stats.values
    if stats.kind == "boolean":
        return ColumnPlan(name, pa.bool_(), "boolean", raw=raw)
    if stats.kind == "decimal":
        if stats.integer_digits + stats.scale > DECIMAL_PRECISION:
            return text
        return ColumnPlan(name, pa.decimal128(DECIMAL_PRECISION, stats.scale), "decimal", raw=raw)
    ordered = tuple(f.strptime for f in FORMATS if f.strptime in stats.formats)
    if stats.kind == "time":
        return ColumnPlan(name, pa.time32("ms"), "time", ordered, raw)
    # A date-time attribute stays a timestamp on a day all its values are dates (no schema drift).
    named = "time" in name.lower() or "when" in name.lower()
    with_time = named or any(f.has_time for f in FORMATS if f.strptime in stats.formats)
    return ColumnPlan(name, pa.timestamp("ms") if with_time else pa.date32(), "temporal", ordered, raw)


def convert(plan: ColumnPlan, values: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """Apply a plan to a batch's values (second pass): the typed column and, if planned, its raw
    companion holding the values that did not fit.

    :param plan: the column's plan.
    :param values: the batch's values, as strings.
    """
    if plan.kind == "string":
        return values, None
    there = present(values)
    if plan.kind == "boolean":
        fit = pc.and_(there, _boolean_spelling(values))
        typed = pc.if_else(fit, pc.is_in(values, pa.array(TRUE_SPELLINGS)), pa.scalar(None, pa.bool_()))
    elif plan.kind == "decimal":
        # Without misfits (the first pass counted them) every present value is a number.
        fit = there if not plan.raw else pc.and_(there, pc.match_substring_regex(values, _DECIMAL_RE))
        digits = pc.replace_substring(pc.if_else(fit, values, pa.scalar(None, pa.string())), ",", "")
        typed = pc.cast(digits, plan.type)
    else:
        parsed, fit, _ = _parse_distinct(values, plan.kind, plan.formats)
        typed = pc.cast(parsed, plan.type)
    raw = None
    if plan.raw:
        raw = pc.if_else(pc.and_(there, pc.invert(fit)), values, pa.scalar(None, pa.string()))
    return typed, raw


def _count(mask: pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _boolean_spelling(values: pa.Array) -> pa.Array:
    return pc.is_in(values, pa.array(TRUE_SPELLINGS + FALSE_SPELLINGS))


def _decimal_extent(values: pa.Array) -> tuple[int, int]:
    scale, integer = _digits_around_point(values)
    if scale + integer > DECIMAL_PRECISION:  # counted signs and commas too: count digits only
        scale, integer = _digits_around_point(pc.replace_substring_regex(values, r"[^0-9.]", ""))
    return scale, integer


def _digits_around_point(digits: pa.Array) -> tuple[int, int]:
    length = pc.utf8_length(digits)
    dot = pc.find_substring(digits, ".")
    has_dot = pc.greater_equal(dot, 0)
    scale = pc.if_else(has_dot, pc.subtract(pc.subtract(length, dot), 1), 0)
    integer = pc.if_else(has_dot, dot, length)
    return int(pc.max(scale).as_py() or 0), int(pc.max(integer).as_py() or 0)


def _parse_distinct(
    values: pa.Array, kind: str, formats: tuple[str, ...] | None
) -> tuple[pa.Array, pa.Array, list[str]]:
    """``_parse_temporal`` over a column's distinct values only: dates repeat on every row."""
    encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary
    parsed, fit, used = _parse_temporal(distinct, present(distinct), kind, formats)
    indices = encoded.indices
    return parsed.take(indices), pc.fill_null(fit.take(indices), False), used


# Distinct values probed for their format before the rest of a batch counts as not fitting.
_MAX_PROBES = 16


def _parse_temporal(
    values: pa.Array, there: pa.Array, kind: str, formats: tuple[str, ...] | None
) -> tuple[pa.Array, pa.Array, list[str]]:
    """Parse dates, times or date-times written in any Flex format, a format at a time.

    With ``formats`` None (first pass), formats are found by probing one unparsed value at a time
    with ``temporal_format``, so a column in one format costs one vectorised parse.
    """
    wanted = {f.strptime: f for f in FORMATS if (f.has_date if kind == "temporal" else not f.has_date)}
    parsed = pa.nulls(len(values), pa.timestamp("s"))
    fit = pc.and_(there, pa.scalar(False))
    left = there
    used: list[str] = []
    tried: set[str] = set()
    queue = list(formats) if formats is not None else []
    for _ in range(len(wanted) + _MAX_PROBES):
        if formats is None:
            if not pc.any(left).as_py():
                break
            probe = pc.filter(values, left)[0].as_py()
            found = temporal_format(probe)
            if found is None or found.strptime not in wanted or found.strptime in tried:
                left = pc.and_(left, pc.not_equal(values, probe))
                continue
            fmt = found
        else:
            if not queue:
                break
            fmt = wanted[queue.pop(0)]
        tried.add(fmt.strptime)
        match = pc.and_(left, pc.match_substring_regex(values, f"^{fmt.pattern}$"))
        stamps = pc.strptime(
            pc.if_else(match, values, pa.scalar(None, pa.string())),
            format=fmt.strptime,
            unit="s",
            error_is_null=True,
        )
        # strptime rolls impossible dates over (2015-02-29 becomes March 1st): a value fits only if
        # writing the parsed moment back in its format gives the value again.
        again = pc.strftime(stamps, format=fmt.strptime)
        same = pc.equal(pc.utf8_lower(again), pc.utf8_lower(values))
        good = pc.fill_null(pc.and_(match, same), False)
        if pc.any(good).as_py():
            used.append(fmt.strptime)
            parsed = pc.if_else(good, stamps, parsed)
            fit = pc.or_(fit, good)
        left = pc.and_(left, pc.invert(match))
    return parsed, pc.fill_null(fit, False), used
