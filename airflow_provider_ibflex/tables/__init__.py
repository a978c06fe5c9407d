"""Flex statements as tables: a streaming, lossless converter into typed per-section tables.

The core has no Airflow imports; ``operators.tables`` runs it as a task. Needs pyarrow
(``pip install 'airflow-provider-ibflex[tables]'``), imported only when the converter is used.

- ``xmlrows`` / ``csvrows``: a statement's rows, read as a stream (XML with defusedxml);
- ``collect``: rows spooled by table in bounded batches while column stats are gathered;
- ``values``: how text becomes typed columns, losing nothing (``catalogue``: known attribute types);
- ``convert``: the two passes and the writes; ``publish``: a run's tables published as one set by
  its manifest (``manifest``, ``layout``);
- ``read``: one table of every conversion under a destination, read through the manifests.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_ibflex.tables.errors import FlexTablesError

__all__ = ["FORMATS", "FlexTablesError", "changes_since", "convert_statement", "manifests", "read_table"]


def __getattr__(name: str) -> Any:
    # The converter and the reader need pyarrow; the errors and the layout do not.
    if name in ("FORMATS", "convert_statement"):
        from airflow_provider_ibflex.tables import convert

        return getattr(convert, name)
    if name in ("manifests", "read_table"):
        from airflow_provider_ibflex.tables import read

        return getattr(read, name)
    if name == "changes_since":
        from airflow_provider_ibflex.tables.manifest import changes_since

        return changes_since
    raise AttributeError(name)
