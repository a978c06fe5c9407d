"""OpenLineage for what the provider reads and writes, as the operators report it on completion.

- The Flex query: namespace ``ibflex://<service host>`` (``ibflex://ndcdyn.interactivebrokers.com``),
  name ``query/<query id>``. SendRequest reads it; the sensor reads it when given ``query_id``.
- The landed statement: the file's own dataset (``file`` and its path, or ``s3://<bucket>`` and its
  key), with its size (output statistics) and its sha256 as the dataset's version. The sensor writes
  it; the tables operator reads it.
- Each table: its folder (Parquet, CSV) or Delta table, with its schema and the statement's rows
  (output statistics).

Everything here needs ``apache-airflow-providers-openlineage``; without it the operators report
nothing (``operator_lineage`` returns None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

QUERY_NAMESPACE = "ibflex://"


def location(uri: str) -> tuple[str, str]:
    """An object's OpenLineage namespace and name from its URL (``file`` and an absolute path for a
    local file; ``<scheme>://<bucket>`` and a key for an object store).

    :param uri: the object's URL or local path.
    """
    parts = urlsplit(uri)
    if parts.scheme in ("", "file", "local"):
        return "file", parts.path or uri
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")


def query_dataset(host: str, query_id: str) -> Any:
    """The Flex query, as a dataset.

    :param host: the service's host (``ndcdyn.interactivebrokers.com``).
    :param query_id: the Flex Query id.
    """
    from airflow.providers.common.compat.openlineage.facet import InputDataset

    return InputDataset(namespace=f"{QUERY_NAMESPACE}{host}", name=f"query/{query_id}")


def statement_dataset(metadata: Mapping[str, Any], output: bool) -> Any:
    """The landed statement (the sensor's XCom), with its sha256 as its version and, as an output,
    its size.

    :param metadata: ``{"uri", "size", "sha256", ...}``.
    :param output: whether it was written (else read).
    """
    from airflow.providers.common.compat.openlineage.facet import (
        DatasetFacet,
        InputDataset,
        OutputDataset,
        OutputStatisticsOutputDatasetFacet,
    )
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet

    namespace, name = location(str(metadata["uri"]))
    facets: dict[str, DatasetFacet] = {
        "version": DatasetVersionDatasetFacet(datasetVersion=str(metadata["sha256"]))
    }
    if not output:
        return InputDataset(namespace=namespace, name=name, facets=facets)
    statistics = OutputStatisticsOutputDatasetFacet(size=int(metadata["size"]))
    return OutputDataset(
        namespace=namespace, name=name, facets=facets, outputFacets={"outputStatistics": statistics}
    )


def table_datasets(manifest: Mapping[str, Any], folders: Mapping[str, str]) -> list[Any]:
    """Each table the converter wrote, with its schema and this statement's rows.

    :param manifest: the conversion's manifest.
    :param folders: each table's dataset URL (its folder, or its Delta table), by table name.
    """
    from airflow.providers.common.compat.openlineage.facet import (
        OutputDataset,
        OutputStatisticsOutputDatasetFacet,
        SchemaDatasetFacet,
        SchemaDatasetFacetFields,
    )

    datasets = []
    for name, entry in manifest["tables"].items():
        namespace, path = location(folders[name])
        fields = [SchemaDatasetFacetFields(name=c["name"], type=c["type"]) for c in entry["columns"]]
        datasets.append(
            OutputDataset(
                namespace=namespace,
                name=path,
                facets={"schema": SchemaDatasetFacet(fields=fields)},
                outputFacets={"outputStatistics": OutputStatisticsOutputDatasetFacet(rowCount=entry["rows"])},
            )
        )
    return datasets


def operator_lineage(inputs: Sequence[Any], outputs: Sequence[Any]) -> Any:
    """An ``OperatorLineage``, or None where the OpenLineage provider is not installed.

    :param inputs: the datasets read.
    :param outputs: the datasets written.
    """
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    return OperatorLineage(inputs=list(inputs), outputs=list(outputs))
