"""Where a conversion's files go under its destination (no pyarrow: the operator's Assets use it)."""

from __future__ import annotations

import posixpath

MANIFEST_FOLDER = "_manifests"


def table_folder(destination: str, section: str, element: str) -> str:
    """A table's folder: ``<destination>/section=<Section>/element=<Element>``, the layout
    partition-aware engines read as columns.

    :param destination: the destination's path or URL.
    :param section: the table's section.
    :param element: its row element (the section itself for a section that is a row).
    """
    return posixpath.join(destination.rstrip("/"), f"section={section}", f"element={element}")


def split_table_name(table: str) -> tuple[str, str]:
    """``Trades/Trade`` -> ``("Trades", "Trade")``; ``AccountInformation`` -> both the same.

    :param table: a table's name.
    """
    section, _, element = table.partition("/")
    return section, element or section


def manifest_path(destination: str, name: str) -> str:
    """The manifest of the conversion named ``name``.

    :param destination: the destination's path or URL.
    :param name: the conversion's file name.
    """
    return posixpath.join(destination.rstrip("/"), MANIFEST_FOLDER, f"{name}.json")
