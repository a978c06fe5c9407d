"""Atomic, streaming writes of a statement into Airflow object storage (file, s3, gcs, ...).

The statement goes chunk by chunk to storage while its size and sha256 are computed; only a complete
statement becomes visible under the destination name (``atomic``): on any failure nothing appears at
the destination.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Iterable
from typing import Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_ibflex.atomic import atomic_open
from airflow_provider_ibflex.protocol import BodyKind, FlexInputError, StatementDigest

log = logging.getLogger(__name__)


def resolve_destination(
    destination: str | ObjectStoragePath, conn_id: str | None = None
) -> ObjectStoragePath:
    """Turn a destination URL or path into an ObjectStoragePath whose filesystem is known.

    Raises before any request is made when the scheme has no filesystem or the path names a folder.

    :param destination: a URL such as ``file:///data/x.xml`` or ``s3://bucket/key.xml``, or a path.
    :param conn_id: the storage connection, e.g. ``aws_default``.
    """
    if not isinstance(destination, (str, ObjectStoragePath)) or not str(destination).strip():
        raise FlexInputError(
            f"destination must be a URL or ObjectStoragePath naming a file, got {destination!r}"
        )
    text = str(destination).strip()
    if text.endswith("/"):
        raise FlexInputError(f"destination {text!r} names a folder; give the statement's file name too")
    try:
        if isinstance(destination, ObjectStoragePath) and not conn_id:
            path = destination
        else:
            path = ObjectStoragePath(text, conn_id=conn_id or getattr(destination, "conn_id", None))
        path.fs  # noqa: B018 - resolving the filesystem is the check
    except (ValueError, ImportError, KeyError) as exc:
        scheme = text.split("://")[0] if "://" in text else "file"
        raise FlexInputError(
            f"destination {text!r}: no object storage is available for scheme {scheme!r} ({exc}). "
            "Install the provider for it (e.g. apache-airflow-providers-amazon[s3fs] for s3://)."
        ) from None
    if not path.name:
        raise FlexInputError(f"destination {text!r} names a folder; give the statement's file name too")
    return path


def write_statement(
    target: ObjectStoragePath, kind: BodyKind, chunks: Iterable[bytes], reference_code: str
) -> dict[str, Any]:
    """Stream a statement into ``target`` atomically (see ``atomic.atomic_open``) and return its
    metadata.

    :param target: the destination (see ``resolve_destination``).
    :param kind: the statement's kind (XML or text).
    :param chunks: the statement's bytes, in order (the head first).
    :param reference_code: the reference code it was fetched with.
    """
    sha = BackgroundSha256()
    digest = StatementDigest(kind, sha)
    try:
        # The filesystem's own file, not ObjectStoragePath.open()'s wrapper: abandoning an upload must
        # reach the file itself, and lineage is reported once for the landed statement, not per chunk.
        with atomic_open(target.fs, target.path) as handle:
            for chunk in chunks:
                if chunk:
                    handle.write(chunk)
                    digest.update(chunk)
            digest.check_complete()
    finally:
        sha.close()
    report_lineage(target)
    return {
        "uri": str(target),
        "size": digest.size,
        "sha256": digest.sha256,
        "format": digest.format,
        "reference_code": reference_code,
    }


def report_lineage(target: ObjectStoragePath) -> None:
    """Tell Airflow's hook lineage a file was written, as ObjectStoragePath's own files do.

    :param target: the file written.
    """
    try:
        from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector
    except ImportError:  # pragma: no cover - lineage is optional
        return
    try:
        get_hook_lineage_collector().add_output_asset(context=target, uri=str(target))
    except Exception:  # lineage is a report: the landed statement must not fail because of it
        log.warning("Could not report lineage for %s", target, exc_info=True)


class BackgroundSha256:
    """sha256 computed in a helper thread, so hashing overlaps the download (hashlib releases the GIL
    on large buffers); a bounded queue keeps memory flat."""

    def __init__(self, depth: int = 8) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="statement-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._sha.update(chunk)

    def update(self, data: bytes, /) -> None:
        self._queue.put(data)

    def close(self) -> None:
        """Stop the helper thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._sha.hexdigest()
