"""Atomic, streaming writes of a statement into Airflow object storage (file, s3, gcs, ...).

The statement goes chunk by chunk to storage while its size and sha256 are computed; only a complete
statement becomes visible under the destination name: object stores publish an upload only when it
completes (and it is aborted on failure), other filesystems get a hidden temporary file that is
renamed into place. On any failure nothing appears at the destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_ibflex.protocol import BodyKind, FlexInputError, StatementDigest

log = logging.getLogger(__name__)
_LOCAL_PROTOCOLS = ("", "file", "local")
# Stores where an object exists only once its upload completes: written directly, aborted on failure.
ATOMIC_ON_CLOSE = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# Upload part size for object stores (S3's minimum part is 5 MiB); bounds what a store buffers.
WRITE_BLOCK_SIZE = 8 * 1024 * 1024


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


def temporary_sibling(target: ObjectStoragePath) -> ObjectStoragePath:
    """A hidden, unique name beside the target for the statement while it is written.

    :param target: the destination.
    """
    return target.parent / f".{target.name}.{uuid.uuid4().hex}.part"


def write_statement(
    target: ObjectStoragePath, kind: BodyKind, chunks: Iterable[bytes], reference_code: str
) -> dict[str, Any]:
    """Stream a statement into ``target`` atomically and return its metadata.

    Object stores that create an object only when its upload completes (S3, GCS, Azure) are written
    directly, and the upload is aborted on failure; other filesystems get a hidden temporary file
    beside the target, renamed into place once the statement is whole.

    :param target: the destination (see ``resolve_destination``).
    :param kind: the statement's kind (XML or text).
    :param chunks: the statement's bytes, in order (the head first).
    :param reference_code: the reference code it was fetched with.
    """
    direct = target.protocol in ATOMIC_ON_CLOSE
    if target.protocol in _LOCAL_PROTOCOLS:
        target.parent.mkdir(parents=True, exist_ok=True)
    written = target if direct else temporary_sibling(target)
    sha = BackgroundSha256()
    digest = StatementDigest(kind, sha)
    # The filesystem's own file, not ObjectStoragePath.open()'s wrapper: abandoning an upload must
    # reach the file itself, and lineage is reported once for the landed statement, not per chunk.
    handle = written.fs.open(written.path, "wb", block_size=WRITE_BLOCK_SIZE)
    try:
        for chunk in chunks:
            if chunk:
                handle.write(chunk)
                digest.update(chunk)
        digest.check_complete()
    except BaseException:
        sha.close()
        _abandon(handle, None if direct else written)
        raise
    try:
        handle.close()
        if not direct:
            target.fs.mv(written.path, target.path)
    except BaseException:
        # A close that failed half-way (the store went away during the last part) leaves the file
        # open: abandon it now, or the garbage collector would try to commit it again later.
        _abandon(handle, None if direct else written)
        raise
    finally:
        sha.close()
    _report_lineage(target)
    return {
        "uri": str(target),
        "size": digest.size,
        "sha256": digest.sha256,
        "format": digest.format,
        "reference_code": reference_code,
    }


def _report_lineage(target: ObjectStoragePath) -> None:
    """Tell Airflow's hook lineage the statement was written, as ObjectStoragePath's own files do."""
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector
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


def _abandon(handle: Any, tmp: ObjectStoragePath | None) -> None:
    # fsspec files commit what they hold on close(): a direct upload is discarded (s3fs aborts the
    # multipart upload) and marked closed, so that neither we nor the file's __del__ ever commit it.
    discard = getattr(handle, "discard", None)
    with contextlib.suppress(Exception):
        if callable(discard):
            discard()
    if tmp is None:
        with contextlib.suppress(Exception):
            handle.closed = True
        return
    with contextlib.suppress(Exception):
        handle.close()
    _remove(tmp)


def _remove(tmp: ObjectStoragePath) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except Exception:  # the original error matters more than a failed clean-up
        log.warning("Could not remove the temporary object %s", tmp)
