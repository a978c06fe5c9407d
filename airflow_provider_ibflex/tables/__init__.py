"""Flex statements as tables: a streaming, lossless converter into typed per-section tables.

The core has no Airflow imports; ``operators.tables`` runs it as a task. Needs pyarrow
(``pip install 'airflow-provider-ibflex[tables]'``).

- ``xmlrows`` / ``csvrows``: a statement's rows, read as a stream (XML with defusedxml);
- ``collect``: rows spooled by table in bounded batches while column stats are gathered;
- ``values``: how text becomes typed columns, losing nothing (``catalogue``: known attribute types);
- ``convert``: the two passes, the atomic writes and the manifest (``manifest``).
"""

from __future__ import annotations

from airflow_provider_ibflex.tables.convert import FORMATS, MANIFEST_FOLDER, convert_statement
from airflow_provider_ibflex.tables.errors import FlexTablesError
from airflow_provider_ibflex.tables.manifest import changes_since

__all__ = ["FORMATS", "MANIFEST_FOLDER", "FlexTablesError", "changes_since", "convert_statement"]
