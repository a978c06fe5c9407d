"""Atomic file writes on any fsspec filesystem: a file appears whole under its name, or not at all.

Object stores publish an upload only when it completes, so they are written directly and the upload
is aborted on failure; other filesystems get a hidden temporary file beside the target, renamed into
place once it is whole. Free of Airflow, so the converter's core can use it too.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
LOCAL_PROTOCOLS = ("", "file", "local")
# Stores where an object exists only once its upload completes: written directly, aborted on failure.
ATOMIC_ON_CLOSE = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# Upload part size for object stores (S3's minimum part is 5 MiB); bounds what a store buffers.
WRITE_BLOCK_SIZE = 8 * 1024 * 1024


def protocol_of(fs: Any) -> str:
    """The first protocol name of an fsspec filesystem (``s3``, ``file``, ...).

    :param fs: the filesystem.
    """
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


def temporary_name(path: str) -> str:
    """A hidden, unique name beside ``path`` for a file while it is written.

    :param path: the target's path on its filesystem.
    """
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.part")


@contextlib.contextmanager
def atomic_open(fs: Any, path: str, block_size: int = WRITE_BLOCK_SIZE) -> Iterator[Any]:
    """Open ``path`` for writing so that it appears only whole, when the block exits without error.

    :param fs: the fsspec filesystem.
    :param path: the target's path on it.
    :param block_size: the upload part size for object stores.
    """
    protocol = protocol_of(fs)
    direct = protocol in ATOMIC_ON_CLOSE
    if protocol in LOCAL_PROTOCOLS:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    written = path if direct else temporary_name(path)
    handle = fs.open(written, "wb", block_size=block_size)
    try:
        yield handle
    except BaseException:
        abandon(fs, handle, None if direct else written)
        raise
    try:
        handle.close()
        if not direct:
            fs.mv(written, path)
    except BaseException:
        # A close that failed half-way (the store went away during the last part) leaves the file
        # open: abandon it now, or the garbage collector would try to commit it again later.
        abandon(fs, handle, None if direct else written)
        raise


def abandon(fs: Any, handle: Any, temporary: str | None) -> None:
    """Give up a file being written: discard a direct upload, or close and remove the temporary file.

    :param fs: its filesystem.
    :param handle: the open file.
    :param temporary: the temporary path, None for a direct upload.
    """
    # fsspec files commit what they hold on close(): a direct upload is discarded (s3fs aborts the
    # multipart upload) and marked closed, so that neither we nor the file's __del__ ever commit it.
    discard = getattr(handle, "discard", None)
    with contextlib.suppress(Exception):
        if callable(discard):
            discard()
    if temporary is None:
        with contextlib.suppress(Exception):
            handle.closed = True
        return
    with contextlib.suppress(Exception):
        handle.close()
    try:
        fs.rm(temporary)
    except FileNotFoundError:
        pass
    except Exception:  # the original error matters more than a failed clean-up
        log.warning("Could not remove the temporary file %s", temporary)
