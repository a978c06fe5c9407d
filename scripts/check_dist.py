"""The release check: what a built wheel and sdist must hold before they are published.

    python scripts/check_dist.py dist/         # after python -m build and twine check (make dist)

The wheel: the package with its ``py.typed``, the licence files, the provider entry point, complete
metadata (licence, URLs, Python classifiers for every supported version, no development extra) and
nothing but the package. The sdist: everything its test suite needs, which it proves by collecting the
whole suite from the extracted tree and running a part of it against the sdist's own package.
"""

from __future__ import annotations

import argparse
import email
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from email.message import Message
from pathlib import Path

PACKAGE = "airflow_provider_ibflex"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PUBLIC_EXTRAS = {"tables", "redis", "postgres"}
# What the extracted suite needs besides tests/test_*.py; a few test modules it runs from there.
SDIST_NEEDS = (
    "LICENSE",
    "NOTICE",
    "README.md",
    "CHANGELOG.md",
    "Makefile",
    "constraints.txt",
    "pyproject.toml",
    "tests/conftest.py",
    "tests/faults.py",
    "tests/services.py",
    "tests/airflow_stack.py",
    "tests/tables_faults.py",
    "tests/fixtures/ibflex_samples.xml",
    "tests/dag_files/ibflex_test_dags.py",
    "tests/compat/conftest.py",
    "example_dags/ibflex_statement_to_storage.py",
    "scripts/compat.py",
)
SDIST_RUNS = ("tests/test_protocol.py", "tests/test_simulator.py")


class DistError(Exception):
    """A built artefact that must not be published."""


def check_metadata(metadata: Message) -> None:
    """Complete metadata: the licence, the project's URLs and authors, a classifier for each
    supported Python, and only the public extras.

    :param metadata: the wheel's METADATA.
    """
    missing = [key for key in ("License-Expression", "Requires-Python", "Author") if not metadata.get(key)]
    if missing:
        raise DistError(f"the wheel's metadata lacks {', '.join(missing)}")
    urls = {value.split(",", 1)[0].strip().lower() for value in metadata.get_all("Project-URL") or []}
    if not {"homepage", "source", "issues", "changelog"} <= urls:
        raise DistError(f"the wheel's Project-URL entries are incomplete: {sorted(urls)}")
    classifiers = set(metadata.get_all("Classifier") or [])
    unlisted = [v for v in PYTHONS if f"Programming Language :: Python :: {v}" not in classifiers]
    if unlisted or not any(c.startswith("Development Status ::") for c in classifiers):
        raise DistError(f"classifiers lack Python {unlisted} or a development status")
    extras = set(metadata.get_all("Provides-Extra") or [])
    if extras != PUBLIC_EXTRAS:
        raise DistError(f"public extras are {sorted(extras)}, expected {sorted(PUBLIC_EXTRAS)}")


def check_wheel(wheel: Path) -> None:
    """The wheel holds the package, its marker of types, the licence files and the entry point, and
    nothing else.

    :param wheel: the built wheel.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"
        metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    strays = [n for n in names if not n.startswith((f"{PACKAGE}/", f"{info}/"))]
    if strays:
        raise DistError(f"the wheel carries files outside the package: {strays[:5]}")
    needed = [
        f"{PACKAGE}/__init__.py",
        f"{PACKAGE}/py.typed",
        f"{info}/licenses/LICENSE",
        f"{info}/licenses/NOTICE",
    ]
    absent = [n for n in needed if n not in names]
    if absent:
        raise DistError(f"the wheel lacks {absent}")
    if f"provider_info = {PACKAGE}:get_provider_info" not in entry_points:
        raise DistError("the wheel does not register the provider's entry point")
    check_metadata(metadata)


def check_sdist(sdist: Path) -> None:
    """The sdist's test suite runs once extracted: every module collects, and a part of it passes
    against the package in the sdist (not an installed one).

    :param sdist: the built source archive.
    """
    with tempfile.TemporaryDirectory(prefix="ibflex-sdist-") as folder:
        with tarfile.open(sdist) as archive:
            archive.extractall(folder, filter="data")
        (root,) = Path(folder).iterdir()
        absent = [name for name in SDIST_NEEDS if not (root / name).exists()]
        if absent:
            raise DistError(f"the sdist lacks {absent}")
        env = {**os.environ, "PYTHONPATH": str(root)}
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        probe = [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"]
        where = subprocess.run(probe, cwd=root, env=env, capture_output=True, text=True, check=True)
        if not where.stdout.strip().startswith(str(root)):
            raise DistError(f"the extracted suite would test {where.stdout.strip()}, not the sdist")
        for command in ([*pytest, "--collect-only"], [*pytest, *SDIST_RUNS]):
            done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
            if done.returncode:
                what = " ".join(command[3:])
                raise DistError(f"{what} failed in the extracted sdist:\n{done.stdout[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dist", type=Path, help="the folder python -m build wrote")
    args = parser.parse_args(argv)
    (wheel,) = args.dist.glob("*.whl")
    (sdist,) = args.dist.glob("*.tar.gz")
    try:
        check_wheel(wheel)
        check_sdist(sdist)
    except DistError as exc:
        print(f"release check failed: {exc}", file=sys.stderr)
        return 1
    print(f"release check passed: {wheel.name}, {sdist.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
