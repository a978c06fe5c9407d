"""How a Flex attribute's text becomes a typed column, as pure functions over Arrow arrays.

A column's type depends only on its name, never on the day's values, so every file the converter
writes gives a column one type and files read together never change a value. A column is typed only
where its type is certain: its name is a Flex attribute of known type (``catalogue``) and it is not
an identifier; every other attribute stays text, exactly as written. Within a typed column the null
spellings (``""``, ``-``, ``--``, ``N/A``) become null, and a value that does not fit the type (a date
written ``MULTI``, a number with more decimals than the fixed scale) becomes null while its exact
text survives in the companion ``<name>__raw`` column, which every typed column has in every file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ibflex.tables import catalogue

NULL_SPELLINGS = ("", "-", "--", "N/A")
TRUE_SPELLINGS = ("Y", "Yes")
FALSE_SPELLINGS = ("N", "No")
RAW_SUFFIX = "__raw"
# One decimal type for every decimal attribute (see the README): Flex writes amounts, prices, rates
# and quantities with at most 9 decimals in the statements we know; 10 leaves one more, and 28
# integer digits hold any amount. A value needing more is kept whole in its raw column, never rounded.
DECIMAL_PRECISION = 38
DECIMAL_SCALE = 10
DECIMAL_TYPE = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
# Times in milliseconds, as Parquet stores them. ``integer`` is the converter's own row number; every
# other typed kind is parsed from text and has a raw companion.
KIND_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "decimal": DECIMAL_TYPE,
    "date": pa.date32(),
    "datetime": pa.timestamp("ms"),
    "time": pa.time32("ms"),
    "boolean": pa.bool_(),
}

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
# A number Flex writes (thousands separators allowed) that the decimal type holds exactly: at most
# 28 integer digits after leading zeros, at most 10 decimals after dropping trailing zeros.
_DECIMAL_FITS = (
    r"^[-+]?0*(?:\d{1,28}|\d{1,3}(?:,\d{3}){1,8}|\d(?:,\d{3}){9})"
    rf"(?:\.\d{{1,{DECIMAL_SCALE}}}0*)?$"
)
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
    """The kind of a column by its name: ``decimal``, ``date``, ``datetime``, ``time``, ``boolean``
    or ``string``.

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
    ("date", catalogue.DATE_NAMES),
    ("datetime", catalogue.DATETIME_NAMES),
    ("time", catalogue.TIME_NAMES),
)
_ALL_NAMES = frozenset().union(*(names for _, names in _KINDS))
_LOWERED = {name.lower(): name for name in _ALL_NAMES}


@dataclass(frozen=True)
class ColumnPlan:
    """How a column is written: a function of its name (and, for the columns every row carries,
    of what they are), never of its values.

    :param name: the column's name.
    :param kind: its kind (``string`` when it is kept as text).
    """

    name: str
    kind: str = "string"

    @property
    def type(self) -> pa.DataType:
        """Its Arrow type."""
        return KIND_TYPES[self.kind]

    @property
    def raw(self) -> bool:
        """Whether a ``<name>__raw`` column keeps values that do not fit (every typed column)."""
        return self.kind not in ("string", "integer")


def plan_column(name: str, kind: str | None = None) -> ColumnPlan:
    """The plan of a column: its declared kind, or ``kind`` if given.

    :param name: the column's name.
    :param kind: a kind that overrides the name's (for the columns every row carries).
    """
    return ColumnPlan(name, kind or declared_kind(name))


def present(values: pa.Array) -> pa.Array:
    """A mask of values that are there: not missing and not a null spelling.

    :param values: a string array.
    """
    return pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array(NULL_SPELLINGS))))


def convert(plan: ColumnPlan, values: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """Apply a plan to a batch's values: the typed column and, for a typed column, its raw companion
    holding the exact text of the values that did not fit (null elsewhere).

    :param plan: the column's plan.
    :param values: the batch's values, as strings (nulls where the attribute was absent).
    """
    if not plan.raw:
        return values, None
    there = present(values)
    if plan.kind == "boolean":
        fit = pc.and_(there, pc.is_in(values, pa.array(TRUE_SPELLINGS + FALSE_SPELLINGS)))
        typed = pc.if_else(fit, pc.is_in(values, pa.array(TRUE_SPELLINGS)), pa.scalar(None, pa.bool_()))
    elif plan.kind == "decimal":
        fit = pc.fill_null(pc.match_substring_regex(values, _DECIMAL_FITS), False)
        digits = pc.replace_substring(pc.if_else(fit, values, pa.scalar(None, pa.string())), ",", "")
        typed = pc.cast(digits, plan.type)
    else:
        parsed, fit = _parse_distinct(values, plan.kind)
        typed = pc.cast(parsed, plan.type)
    raw = pc.if_else(pc.and_(there, pc.invert(fit)), values, pa.scalar(None, pa.string()))
    return typed, raw


def _parse_distinct(values: pa.Array, kind: str) -> tuple[pa.Array, pa.Array]:
    """``_parse_temporal`` over a column's distinct values only: dates repeat on every row."""
    encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary
    parsed, fit = _parse_temporal(distinct, present(distinct), kind)
    indices = encoded.indices
    return parsed.take(indices), pc.fill_null(fit.take(indices), False)


# Distinct values probed for their format before the rest of a batch counts as not fitting.
_MAX_PROBES = 16


def _wanted(kind: str) -> dict[str, Format]:
    """The formats a kind's values may be written in: a date column takes dates only (a time would
    be lost), a date-time column dates too (a date is its midnight), a time column times."""
    if kind == "date":
        chosen = [f for f in FORMATS if f.has_date and not f.has_time]
    elif kind == "datetime":
        chosen = [f for f in FORMATS if f.has_date]
    else:
        chosen = [f for f in FORMATS if not f.has_date]
    return {f.strptime: f for f in chosen}


_WANTED = {kind: _wanted(kind) for kind in ("date", "datetime", "time")}


def _parse_temporal(values: pa.Array, there: pa.Array, kind: str) -> tuple[pa.Array, pa.Array]:
    """Parse dates, times or date-times written in any Flex format, a format at a time.

    Formats are found by probing one unparsed value at a time with ``temporal_format``, so a column
    in one format costs one vectorised parse.
    """
    wanted = _WANTED[kind]
    parsed = pa.nulls(len(values), pa.timestamp("s"))
    fit = pc.and_(there, pa.scalar(False))
    left = there
    tried: set[str] = set()
    for _ in range(len(wanted) + _MAX_PROBES):
        if not pc.any(left).as_py():
            break
        probe = pc.filter(values, left)[0].as_py()
        fmt = temporal_format(probe)
        if fmt is None or fmt.strptime not in wanted or fmt.strptime in tried:
            left = pc.and_(left, pc.not_equal(values, probe))
            continue
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
        parsed = pc.if_else(good, stamps, parsed)
        fit = pc.or_(fit, good)
        left = pc.and_(left, pc.invert(match))
    return parsed, pc.fill_null(fit, False)
