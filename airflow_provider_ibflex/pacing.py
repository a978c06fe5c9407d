"""Per-token pacing shared by every Hook and trigger in one process (1 request/s, 10/min per token).

The arithmetic is the protocol core's ``PacingWindow``; this module only keeps one window per token
and supplies the sleep, blocking for the Hook and ``asyncio`` for the triggers.
"""

from __future__ import annotations

import asyncio
import threading
import time

from airflow_provider_ibflex.protocol import PacingWindow, token_key
from airflow_provider_ibflex.settings import FlexSettings

_LOCK = threading.Lock()
_WINDOWS: dict[tuple[str, float, int, float], PacingWindow] = {}


def _window(settings: FlexSettings) -> PacingWindow:
    limits = (settings.min_interval, settings.max_requests_per_minute, settings.rate_window)
    key = (token_key(settings.token), *limits)
    with _LOCK:
        window = _WINDOWS.get(key)
        if window is None:
            window = _WINDOWS[key] = PacingWindow(*limits)
        return window


def reserve(settings: FlexSettings) -> float:
    """Claim the next request slot for this token and return how many seconds to wait for it.

    :param settings: the connection's settings (its token and pacing limits).
    """
    window = _window(settings)
    with _LOCK:
        return window.reserve(time.monotonic())


def hold_off(settings: FlexSettings, seconds: float) -> None:
    """Allow no request with this token for ``seconds`` (after a 1018).

    :param settings: the connection's settings.
    :param seconds: how long to hold off.
    """
    window = _window(settings)
    with _LOCK:
        window.hold_off(time.monotonic() + seconds)


def mark_sent(settings: FlexSettings) -> None:
    """Record that this token's last reserved request goes out now (it may have waited for more).

    :param settings: the connection's settings.
    """
    window = _window(settings)
    with _LOCK:
        window.mark_sent(time.monotonic())


def wait_turn(settings: FlexSettings) -> None:
    """Block until this token may make its next request.

    :param settings: the connection's settings.
    """
    delay = reserve(settings)
    if delay > 0:
        time.sleep(delay)


async def await_turn(settings: FlexSettings) -> None:
    """Wait, without blocking the event loop, until this token may make its next request.

    :param settings: the connection's settings.
    """
    delay = reserve(settings)
    if delay > 0:
        await asyncio.sleep(delay)
