"""The manifest a conversion writes last: what tables it wrote, their rows and schemas, the statement
count check, and what is new since a previous manifest. Pure functions over plain dicts (JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MANIFEST_VERSION = 2


def table_entry(
    section: str, element: str, uri: str, rows: int, columns: list[tuple[str, str]]
) -> dict[str, Any]:
    """A table's entry in the manifest.

    :param section: its section.
    :param element: its row element.
    :param uri: where it was written.
    :param rows: its row count.
    :param columns: its columns' names and Arrow types, in order.
    """
    return {
        "section": section,
        "element": element,
        "uri": uri,
        "rows": rows,
        "columns": [{"name": name, "type": type_} for name, type_ in columns],
    }


def changes_since(previous: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sections, tables and columns present now but not in a previous manifest, and columns whose
    type changed.

    :param previous: the previous manifest.
    :param tables: this conversion's table entries, by table name.
    """
    before: Mapping[str, Any] = previous.get("tables", {})
    old_sections = {entry["section"] for entry in before.values()}
    new_columns: dict[str, list[str]] = {}
    retyped: dict[str, dict[str, list[str]]] = {}
    for name, entry in tables.items():
        if name not in before:
            continue
        was = {column["name"]: column["type"] for column in before[name]["columns"]}
        added = [column["name"] for column in entry["columns"] if column["name"] not in was]
        changed = {
            column["name"]: [was[column["name"]], column["type"]]
            for column in entry["columns"]
            if column["name"] in was and was[column["name"]] != column["type"]
        }
        if added:
            new_columns[name] = added
        if changed:
            retyped[name] = changed
    return {
        "new_sections": sorted({entry["section"] for entry in tables.values()} - old_sections),
        "new_tables": sorted(set(tables) - set(before)),
        "new_columns": new_columns,
        "retyped_columns": retyped,
    }
