"""A conversion that fails at a chosen point of its publication, on a real filesystem or real S3.

The destination's filesystem is the real one (local, or s3fs against moto's server) with one fault:
when the converter reaches the point, it raises ``OSError`` or kills its own process with SIGKILL (so
that no clean-up code runs, as when a worker is lost). Run as ``python -m tests.tables_faults SPEC``
for the kill, or call ``convert_with_fault`` in the test's process for the raise.

Points: ``before-commit`` (every table written, the manifest about to be), ``after-commit`` (the
manifest written, the previous set about to be removed).
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import sys
from types import SimpleNamespace
from typing import Any

from fsspec.implementations.local import LocalFileSystem

POINTS = ("before-commit", "after-commit")


class _Fault:
    """Mixed into a real filesystem class: the fault fires once, at its point."""

    point = ""
    action = ""
    manifest = ""
    fired = False

    def _reach(self, operation: str, path: str) -> None:
        if self.fired:
            return
        name = posixpath.basename(path)
        manifest = posixpath.basename(self.manifest)
        at_manifest = operation == "write" and (name == manifest or name.startswith(f".{manifest}."))
        at_retire = operation == "rm" and "/section=" in path
        if (self.point == "before-commit" and at_manifest) or (self.point == "after-commit" and at_retire):
            self.fired = True
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(f"injected fault at {self.point} ({operation} {path})")

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            self._reach("write", str(path))
        return super().open(path, mode, *args, **kwargs)  # type: ignore[misc]

    def rm(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        for one in path if isinstance(path, list) else [path]:
            self._reach("rm", str(one))
        return super().rm(path, *args, **kwargs)  # type: ignore[misc]


class FaultyLocal(_Fault, LocalFileSystem):
    """The local filesystem, with a fault."""


def faulty_s3(endpoint: str) -> Any:
    """s3fs against moto's server, with a fault."""
    from s3fs import S3FileSystem

    class FaultyS3(_Fault, S3FileSystem):
        pass

    return FaultyS3(
        key="testing",
        secret="testing",
        endpoint_url=endpoint,
        client_kwargs={"region_name": "eu-west-2"},
        skip_instance_cache=True,
    )


def convert_with_fault(spec: dict[str, Any]) -> dict[str, Any]:
    """Convert ``spec["source"]`` to ``spec["destination"]`` (a path on the local filesystem, or a
    ``bucket/key`` path on the S3 at ``spec["endpoint"]``) as ``spec["name"]``, with the fault
    ``spec["point"]`` / ``spec["action"]``.

    :param spec: what to convert and where to fail.
    """
    from airflow_provider_ibflex.tables import convert_statement

    fs: Any = faulty_s3(spec["endpoint"]) if spec.get("endpoint") else FaultyLocal(skip_instance_cache=True)
    fs.point, fs.action = spec["point"], spec["action"]
    destination = spec["destination"].rstrip("/")
    fs.manifest = posixpath.join(destination, "_manifests", f"{spec['name']}.json")
    return convert_statement(spec["source"], SimpleNamespace(fs=fs, path=destination), name=spec["name"])


if __name__ == "__main__":
    convert_with_fault(json.loads(sys.argv[1]))
    sys.exit(0)
