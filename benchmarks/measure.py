"""Measuring one process: RSS growth over a baseline (sampled and kernel peak) and elapsed time.

Shared by every benchmark case, ours and the anchors' (this module uses only the standard library,
so the anchors' environment can import it too).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, SupportsIndex

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kib() -> int:
    """This process's resident set size now, in KiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_KIB


@contextmanager
def sampled_peak(period: float = 0.005) -> Iterator[list[int]]:
    """Sample this process's RSS every ``period`` seconds during the block; yields ``[peak KiB]``.

    Sampled, not the kernel's lifetime peak, which would count what happened before the block.

    :param period: seconds between samples.
    """
    peak = [rss_kib()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(period):
            peak[0] = max(peak[0], rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], rss_kib())


@contextmanager
def measured(result: dict[str, Any]) -> Iterator[None]:
    """Record ``seconds`` and ``rss_growth_mib`` (peak RSS during the block minus RSS before it).

    :param result: the dict the figures are written into.
    """
    before = rss_kib()
    started = time.perf_counter()
    with sampled_peak() as peak:
        try:
            yield
        finally:
            result["seconds"] = time.perf_counter() - started
    kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["rss_growth_mib"] = max(peak[0], kernel_peak) / 1024 - before / 1024


def scale_sleep(factor: float) -> None:
    """Compress a client's own waits by ``factor``, as the simulator compresses its time.

    :param factor: the time scale (waits are divided by it).
    """
    original = time.sleep

    def compressed(seconds: float | SupportsIndex) -> None:
        original(float(seconds) / factor)

    time.sleep = compressed


def emit(result: dict[str, Any]) -> None:
    """Print the result as the last line of output, for the orchestrator."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
