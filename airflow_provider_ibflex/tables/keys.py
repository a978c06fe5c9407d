"""How a statement's rows meet the rows already in a Delta table: the natural keys IB guarantees unique,
each with the evidence for it (the catalogue's merge keys), and the rule for every other table.

- ``key``: a newer statement's row replaces the row with the same key (one MERGE per table);
  overlapping statements (a "last 7 days" query run daily) and reruns never duplicate a row. A row
  without a value for its key (a summary row) is matched by its place in its statement instead.
- ``period``: the table holds no trustworthy key, so each (account, statement period) is replaced
  whole by its newest statement.

A DAG author overrides a table's rule with ``merge_keys={"Trades/Trade": ["transactionID"]}`` (an
empty list asks for ``period``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from airflow_provider_ibflex.tables.errors import FlexTablesError


@dataclass(frozen=True)
class NaturalKey:
    """A table's natural key and why it can be trusted.

    :param columns: the key's columns.
    :param evidence: where IB says so.
    """

    columns: tuple[str, ...]
    evidence: str


NATURAL_KEYS: dict[str, NaturalKey] = {
    "Trades/Trade": NaturalKey(
        ("transactionID",),
        "IB's Flex Query reference defines TransactionID as the unique identifier of the transaction; "
        "each execution (levelOfDetail EXECUTION, the Trade element) has its own, and it stays the same "
        "in every statement that reports the execution. Orders and closed lots are other elements.",
    ),
    "CashTransactions/CashTransaction": NaturalKey(
        ("transactionID",),
        "IB's Flex Query reference defines TransactionID as the unique identifier of each cash "
        "transaction (dividends, withholding, interest, fees, deposits), stable across statements; "
        "summary rows carry none and are matched by their place in their statement.",
    ),
}


@dataclass(frozen=True)
class Rule:
    """How one table's rows are written into its Delta table.

    :param kind: ``key`` or ``period``.
    :param keys: the key's columns (``key`` only).
    :param source: ``catalogue``, ``override``, or why the catalogue's key could not be used.
    """

    kind: str
    keys: tuple[str, ...] = ()
    source: str = "catalogue"

    def describe(self) -> dict[str, object]:
        """The rule as the manifest records it."""
        return {"kind": self.kind, "keys": list(self.keys), "source": self.source}


def rule_for(
    table: str, columns: Iterable[str], overrides: Mapping[str, Sequence[str]] | None = None
) -> Rule:
    """The rule for ``table``, whose rows have ``columns``.

    :param table: the table's name (``Trades/Trade``).
    :param columns: the table's columns in this statement.
    :param overrides: the DAG author's keys by table (an empty list: ``period``).
    """
    present = set(columns)
    if overrides and table in overrides:
        keys = tuple(overrides[table])
        if not keys:
            return Rule("period", source="override")
        missing = [column for column in keys if column not in present]
        if missing:
            raise FlexTablesError(
                f"merge_keys for {table} name {missing}, which its rows do not have (they have: "
                f"{sorted(present)}); name columns of the table, or [] to replace it per period"
            )
        return Rule("key", keys, "override")
    natural = NATURAL_KEYS.get(table)
    if natural is None:
        return Rule("period")
    missing = [column for column in natural.columns if column not in present]
    if missing:
        return Rule("period", source=f"the query leaves out the key {missing}")
    return Rule("key", natural.columns)
