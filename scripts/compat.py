"""The compatibility job: the built wheel on every supported Airflow minor, each in a clean venv.

For each target (an Airflow release and a Python), a venv of that Python gets the release, the wheel
(with its ``tables`` extra) and pytest, all pinned by the constraints file the project keeps for that
minor (``tests/compat/constraints/``); then the compatibility subset (``tests/compat``, with the example
DAGs) runs against it from a folder outside the checkout, so that it imports the wheel. Targets run
two at a time; pip's cache is shared, and a venv is kept between runs (only the wheel reinstalled) while
its pins and the provider's declared dependencies are the same.

    python scripts/compat.py                      # every target (make compat)
    python scripts/compat.py --only 2.11 3.1      # some
    python scripts/compat.py --refresh 3.2        # resolve anew, check (pip check, the subset), pin

``--refresh`` resolves the target's requirements without its constraints (plus the pins a release is
known to need), and writes the constraints file only when ``pip check`` is clean and the subset passes.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".compat"
CONSTRAINTS = REPO / "tests" / "compat" / "constraints"
TEST_REQUIREMENTS = ["pytest>=8", "pytest-timeout>=2.3"]


@dataclass(frozen=True)
class Target:
    """One Airflow release on one Python.

    :param minor: the Airflow minor (``3.1``).
    :param airflow: the release tested (the minor's latest).
    :param python: the Python version.
    :param pins: what a fresh resolution must be told for the release to work.
    :param extras: more packages to install with it.
    """

    minor: str
    airflow: str
    python: str
    pins: tuple[str, ...] = field(default=())
    extras: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"airflow-{self.minor}-py{self.python}"

    @property
    def constraints(self) -> Path:
        return CONSTRAINTS / f"{self.name}.txt"


TARGETS = (
    Target("2.11", "2.11.2", "3.10"),
    # Plain pip gives 3.0 a fastapi, cadwyn and svcs its execution API rejects every task with, and a
    # universal-pathlib whose file:// paths its ObjectStoragePath refuses. Its UI shows a provider's
    # connection form only with the FAB provider installed, so that is installed too.
    Target(
        "3.0",
        "3.0.6",
        "3.12",
        ("fastapi==0.116.1", "cadwyn==5.4.4", "svcs==25.1.0", "universal-pathlib==0.2.6"),
        ("apache-airflow-providers-fab",),
    ),
    Target("3.1", "3.1.8", "3.11"),
    # With plain pip, 3.2 resolves a fastapi/cadwyn pair that breaks every `airflow dags test`, and svcs
    # 26 (a lifespan 3.2 does not wait for) leaves its in-process execution API without its registry.
    Target("3.2", "3.2.2", "3.11", ("fastapi==0.136.3", "cadwyn==7.0.0", "svcs==25.1.0")),
    Target("3.3", "3.3.2", "3.13"),
)


def interpreter(version: str) -> str:
    """A Python of ``version``: one of pyenv's builds, else one on PATH (not a pyenv shim, which
    answers only for the selected versions)."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    builds = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    if builds:
        return builds[-1]
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / f"python{version}"
        if "shims" not in candidate.parts and candidate.exists():
            return str(candidate)
    raise SystemExit(f"no Python {version} under {root}/versions or on PATH: install it with pyenv")


def build_wheel() -> Path:
    """The wheel of the checkout, built once per run."""
    dist = WORK / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(REPO)],
        check=True,
    )
    (wheel,) = dist.glob("airflow_provider_ibflex-*.whl")
    return wheel


def run(command: list[str], log: Path, **kwargs: object) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload,unused-ignore]


def prepare(target: Target, wheel: Path, refresh: bool, log: Path) -> Path:
    """The target's venv with everything installed (kept while the pins and the wheel are unchanged)."""
    venv = WORK / target.name
    python = venv / "bin" / "python"
    requirements = [
        f"apache-airflow=={target.airflow}",
        f"{wheel}[tables]",
        *target.extras,
        *TEST_REQUIREMENTS,
        *target.pins,
    ]
    log.write_text(f"{target}\n")
    pins = "" if refresh else target.constraints.read_text()
    # A venv is reused while the target, its pins and the provider's declared dependencies are the same.
    stamp = hashlib.sha256(f"{target}\n{pins}\n{(REPO / 'pyproject.toml').read_text()}".encode())
    stamp_file = venv / ".installed"
    if not refresh and stamp_file.exists() and stamp_file.read_text() == stamp.hexdigest():
        # Only the wheel is new.
        run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)],
            log,
        )
        return python
    shutil.rmtree(venv, ignore_errors=True)
    run([interpreter(target.python), "-m", "venv", str(venv)], log)
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log)
    constraint = [] if refresh else ["--constraint", str(target.constraints)]
    run([str(python), "-m", "pip", "install", "--quiet", *constraint, *requirements], log)
    run([str(python), "-m", "pip", "check"], log)
    stamp_file.write_text(stamp.hexdigest())
    return python


def subset(python: Path, log: Path) -> None:
    """The compatibility subset, from a folder outside the checkout (so the wheel is what imports)."""
    with tempfile.TemporaryDirectory(prefix="ibflex-compat-") as folder:
        tests = Path(folder) / "compat"
        skip = shutil.ignore_patterns("constraints", "__pycache__")
        shutil.copytree(REPO / "tests" / "compat", tests, ignore=skip)
        shutil.copytree(REPO / "example_dags", tests / "example_dags")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))}
        # Its conftest turns a deprecation warning from our code into an error.
        command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
        run(command, log, cwd=folder, env=env)


def pin(target: Target, python: Path) -> None:
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude", "airflow-provider-ibflex"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = sorted(line for line in frozen.splitlines() if line and not line.startswith(("-e", "#")))
    header = (
        f"# apache-airflow {target.airflow} on Python {target.python} with airflow-provider-ibflex[tables] "
        "and pytest: resolved, `pip check` clean and the compatibility subset passing\n"
        f"# (python scripts/compat.py --refresh {target.minor}).\n"
    )
    target.constraints.write_text(header + "\n".join(lines) + "\n")


def job(target: Target, wheel: Path, refresh: bool) -> tuple[Target, bool, float, Path]:
    log = WORK / f"{target.name}.log"
    started = time.monotonic()
    try:
        python = prepare(target, wheel, refresh, log)
        subset(python, log)
        if refresh:
            pin(target, python)
        ok = True
    except subprocess.CalledProcessError:
        ok = False
    return target, ok, time.monotonic() - started, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", help="Airflow minors to run (all by default)")
    parser.add_argument(
        "--refresh", nargs="*", help="resolve these minors anew and rewrite their constraints"
    )
    parser.add_argument("--jobs", type=int, default=2, help="targets run at once")
    args = parser.parse_args(argv)
    wanted = set(args.only or []) | set(args.refresh or [])
    targets = [t for t in TARGETS if not wanted or t.minor in wanted]
    WORK.mkdir(exist_ok=True)
    CONSTRAINTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    wheel = build_wheel()
    refreshing = set(args.refresh or [])
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda t: job(t, wheel, t.minor in refreshing), targets))
    print(f"\nCompatibility of {wheel.name} ({time.monotonic() - started:.0f} s in all):")
    for target, ok, seconds, log in results:
        verdict = "passed" if ok else "FAILED"
        print(f"  {verdict}  Airflow {target.airflow} on Python {target.python}  ({seconds:.0f} s)  {log}")
    failed = [log for _, ok, _, log in results if not ok]
    for log in failed:
        print(f"\n--- the end of {log} ---")
        print("\n".join(log.read_text().splitlines()[-60:]))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
