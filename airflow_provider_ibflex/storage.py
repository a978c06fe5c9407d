"""Atomic, streaming writes of a statement into Airflow object storage (file, s3, gcs, ...).

The statement goes chunk by chunk into a temporary object beside the destination while its size and
sha256 are computed; only a complete statement is then moved to the destination name. On any failure
the temporary object is removed and nothing appears at the destination.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_ibflex.protocol import BodyKind, FlexInputError, StatementDigest

log = logging.getLogger(__name__)
_LOCAL_PROTOCOLS = ("", "file", "local")


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

    :param target: the destination (see ``resolve_destination``).
    :param kind: the statement's kind (XML or text).
    :param chunks: the statement's bytes, in order (the head first).
    :param reference_code: the reference code it was fetched with.
    """
    digest = StatementDigest(kind)
    if target.protocol in _LOCAL_PROTOCOLS:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    handle = tmp.open("wb")
    try:
        for chunk in chunks:
            if chunk:
                handle.write(chunk)
                digest.update(chunk)
        digest.check_complete()
    except BaseException:
        _abandon(handle, tmp)
        raise
    try:
        handle.close()
        target.fs.mv(tmp.path, target.path)
    except BaseException:
        _remove(tmp)
        raise
    return {
        "uri": str(target),
        "size": digest.size,
        "sha256": digest.sha256,
        "format": digest.format,
        "reference_code": reference_code,
    }


def _abandon(handle: Any, tmp: ObjectStoragePath) -> None:
    # fsspec files commit what they hold on close(); discard() aborts an upload where the store has it.
    discard = getattr(handle, "discard", None)
    with contextlib.suppress(Exception):
        if callable(discard):
            discard()
    with contextlib.suppress(Exception):
        handle.close()
    _remove(tmp)


def _remove(tmp: ObjectStoragePath) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except Exception:  # the original error matters more than a failed clean-up
        log.warning("Could not remove the temporary object %s", tmp)
