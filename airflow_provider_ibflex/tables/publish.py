"""A conversion's tables published as one set, on any fsspec filesystem (object stores have no rename).

Each run writes its tables under names no other run uses (``<name>.<run>.<format>``), so the set an
earlier run published stays whole while the new one is written. The manifest
``_manifests/<name>.json``, replaced atomically and last, is the commit point: readers that go
through manifests see the previous set or the new one, never a mix. Only after the commit are the
previous set's files removed.

A run first records what it is about to write, and what it will retire, in a pending note
(``_manifests/pending/<name>.<run>.json``). A run that fails removes what it wrote; a run that is
killed cannot, so the next run of the same name, once committed, removes whatever the notes of
earlier runs list and drops the notes. One conversion per name at a time (as one Airflow task
instance is) is assumed: a concurrent run of the same name could have its files removed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import posixpath
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_ibflex.atomic import atomic_open
from airflow_provider_ibflex.tables.errors import FlexTablesError
from airflow_provider_ibflex.tables.layout import MANIFEST_FOLDER, manifest_path

log = logging.getLogger(__name__)
PENDING_FOLDER = "pending"
_RUN_PATTERN = r"\d{8}T\d{6}Z-[0-9a-f]{8}"


def new_run_id(now: datetime.datetime | None = None) -> str:
    """A run's id: its UTC start time (so names sort by age) and 8 random hex digits.

    :param now: the start time (the current time by default).
    """
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def check_file_name(name: str) -> str:
    """``name`` if it can name a conversion's files, else a ``FlexTablesError`` saying why.

    :param name: the conversion's name (the operator's ``name``).
    """
    problem = ""
    if not name or name in (".", ".."):
        problem = "is empty or a relative folder"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name[0] in "._":
        problem = "starts with '.' or '_', which readers (pyarrow, Spark) skip as hidden"
    elif any(ord(c) < 32 for c in name):
        problem = "contains control characters"
    if problem:
        raise FlexTablesError(f"name {name!r} {problem}; give a plain file name such as '2026-11-20-123456'")
    return name


def is_under(root: str, path: str) -> bool:
    """Whether ``path`` lies strictly below the folder ``root`` once normalised.

    :param root: a folder's path on its filesystem.
    :param path: a path on the same filesystem.
    """
    base = posixpath.normpath(root or "/")
    normal = posixpath.normpath(path)
    return normal != base and normal.startswith(base.rstrip("/") + "/") and ".." not in path.split("/")


class Publication:
    """One run's publication of a conversion's tables under a destination.

    :param fs: the destination's fsspec filesystem.
    :param root: the destination's path on it.
    :param name: the conversion's name.
    :param run: this run's id (a new one by default).
    """

    def __init__(self, fs: Any, root: str, name: str, run: str | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.name = check_file_name(name)
        self.run = run or new_run_id()
        self.manifest_path = manifest_path(self.root, self.name)
        self.note_path = posixpath.join(self.root, MANIFEST_FOLDER, PENDING_FOLDER, f"{name}.{self.run}.json")
        self.files: list[str] = []
        self.written: list[str] = []
        self.previous: dict[str, Any] | None = None

    def file_path(self, folder: str, extension: str) -> str:
        """This run's file in ``folder``, checked to lie under the destination.

        :param folder: the table's folder (a path on the destination's filesystem).
        :param extension: the file's extension, without the dot.
        """
        path = posixpath.join(folder, f"{self.name}.{self.run}.{extension}")
        if not is_under(self.root, path):
            raise FlexTablesError(f"{path} is not under the destination {self.root}; nothing was written")
        return path

    def begin(self, files: Iterable[str]) -> None:
        """Read the set published now and record, before anything is written, what this run writes
        and what it will retire.

        :param files: the paths this run will write (from ``file_path``).
        """
        self.files = list(files)
        self.previous = self._read_manifest()
        note = {"run": self.run, "files": self.files, "retire": self._previous_files()}
        self._write_json(self.note_path, note)

    def wrote(self, path: str) -> None:
        """Record that one of this run's files is complete.

        :param path: the file's path.
        """
        self.written.append(path)

    def commit(self, manifest: Mapping[str, Any]) -> None:
        """Publish: replace the manifest, atomically. From here the new set is the published one.

        :param manifest: the manifest.
        """
        self._write_json(self.manifest_path, manifest, indent=2)

    def abort(self) -> None:
        """After a failure before the commit: remove what this run wrote, and its note. The
        previous set was never touched."""
        for path in [*self.written, self.note_path]:
            with contextlib.suppress(Exception):
                self.fs.rm(path)

    def retire(self) -> None:
        """After the commit: remove the previous set's files and whatever earlier runs' notes list,
        then the notes. A failure is logged and the note kept: the next run of the name retries."""
        keep = set(self.files)
        doomed = set(self._previous_files())
        notes = self._earlier_notes()
        for note in notes.values():
            doomed.update(note.get("files", []))
            doomed.update(note.get("retire", []))
        try:
            for path in sorted(doomed - keep):
                if not is_under(self.root, path):
                    log.warning("Not removing %s: it does not lie under %s", path, self.root)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path)
            for note_path in [*notes, self.note_path]:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(note_path)
        except Exception as exc:  # the new set is published; leftovers only cost space
            log.warning(
                "The tables of %s are published, but removing the previous run's files failed (%s); the "
                "next conversion named %s removes them (see %s)",
                self.name,
                exc,
                self.name,
                self.note_path,
            )

    # -- helpers --------------------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any] | None:
        # Another process may have changed it since this filesystem object cached a listing.
        self.fs.invalidate_cache(posixpath.dirname(self.manifest_path))
        try:
            with self.fs.open(self.manifest_path, "rb") as handle:
                loaded = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("The manifest %s is not JSON (%s): its files stay", self.manifest_path, exc)
            return None
        return loaded if isinstance(loaded, dict) else None

    def _previous_files(self) -> list[str]:
        tables = (self.previous or {}).get("tables", {})
        uris = [entry.get("uri") for entry in tables.values() if isinstance(entry, Mapping)]
        return [self.fs._strip_protocol(uri) for uri in uris if isinstance(uri, str)]

    def _earlier_notes(self) -> dict[str, dict[str, Any]]:
        folder = posixpath.join(self.root, MANIFEST_FOLDER, PENDING_FOLDER)
        pattern = re.compile(re.escape(self.name) + r"\." + _RUN_PATTERN + r"\.json")
        self.fs.invalidate_cache(folder)
        try:
            listed = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return {}
        notes: dict[str, dict[str, Any]] = {}
        for path in listed:
            path = self.fs._strip_protocol(path)
            if path == self.note_path or not pattern.fullmatch(posixpath.basename(path)):
                continue
            try:
                with self.fs.open(path, "rb") as handle:
                    note = json.loads(handle.read())
            except (OSError, ValueError) as exc:
                log.warning("Skipping the unreadable pending note %s (%s)", path, exc)
                continue
            if isinstance(note, dict):
                notes[path] = note
        return notes

    def _write_json(self, path: str, body: Mapping[str, Any], indent: int | None = None) -> None:
        with atomic_open(self.fs, path) as out:
            out.write(json.dumps(body, indent=indent).encode())
