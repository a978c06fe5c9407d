"""Per-token request budget shared by every process that uses the token: workers and triggerers alike.

``TokenBudget(settings)`` gives a transport its turns: ``with budget.turn(): send`` (the Hook) or
``async with budget.aturn(): send`` (the trigger). A turn is a lease on the token held until the
answer's head arrives; the next turn comes ``min_interval`` after that answer and within the
window's allowance, whichever process asks. After a 1018, ``budget.throttled()`` holds the token off
for every process. The arithmetic is ``pacing.budget`` (pure); the state lives in a store shared by all
processes (``pacing.stores``), chosen by Airflow's configuration:

- ``[ibflex] rate_limit_conn_id``: a ``redis`` or ``postgres`` connection, for a budget shared across
  machines;
- ``[ibflex] rate_limit_folder``: the file store's folder when no connection is set (default
  ``$AIRFLOW_HOME/ibflex/rate-limits``, shared by every process on one machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from airflow_provider_ibflex.pacing.budget import (
    JITTER,
    Ask,
    Grant,
    Limits,
    hold_off,
    release,
    token_key,
    try_acquire,
)
from airflow_provider_ibflex.pacing.stores import SECTION, BudgetStore, store_from_config

if TYPE_CHECKING:
    from airflow_provider_ibflex.settings import FlexSettings

log = logging.getLogger(__name__)

# Waits this long or longer are worth a line in the task's log.
_LOG_WAITS_FROM = 5.0
# Threads for the trigger's store calls: a store may block (flock, a round trip to Redis).
_STORE_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ibflex-budget")


class BudgetBusy(Exception):
    """The token's next turn is further away than the caller was willing to wait; nothing was sent.

    :param grant: the store's last answer (its ``wait`` and ``reason``).
    """

    def __init__(self, grant: Grant) -> None:
        super().__init__(
            f"the token's request budget is busy ({grant.reason}); next turn in about {grant.wait:.0f} s"
        )
        self.grant = grant


class BudgetTight(Exception):
    """A turn is free, but the caller asked not to take it (a peek, or too few spare requests left)."""

    def __str__(self) -> str:
        return "the token's budget has no turn to spare"


def later(seconds: float) -> float:
    """``seconds`` stretched by up to ``JITTER`` of itself, never shortened.

    :param seconds: the nominal wait.
    """
    return max(seconds, 0.0) * (1 + random.uniform(0, JITTER))


class TokenBudget:
    """The shared request budget of one token, as one transport uses it.

    :param settings: the connection's settings: its token (the budget's key, alone) and limits.
    :param store: where the budget lives; the configured store by default.
    """

    def __init__(self, settings: FlexSettings, store: BudgetStore | None = None) -> None:
        self.key = token_key(settings.token)
        self.limits = Limits(
            settings.min_interval,
            settings.max_requests_per_minute,
            settings.rate_window,
            # Answered or timed out within its timeouts: a lease outliving them is a dead process's.
            lease_seconds=settings.connect_timeout + settings.read_timeout + 5,
        )
        self.throttle_wait = settings.throttle_wait
        self.store = store if store is not None else shared_store()

    # -- one store transaction each ------------------------------------------------------------------

    def ask(self, ask: Ask) -> Grant:
        """Try once to take (or peek at) the token's next turn.

        :param ask: who asks and on what terms.
        """
        return self.store.update(self.key, lambda state, now: try_acquire(state, self.limits, now, ask))

    def give_back(self, holder: str) -> None:
        """End the turn of ``holder``: its answer has arrived.

        :param holder: the turn's id.
        """
        self.store.update(self.key, lambda state, now: (release(state, now, holder), None))

    def throttled(self) -> None:
        """The service answered 1018: hold the token off for ``throttle_wait`` in every process."""
        self.store.update(self.key, lambda state, now: (hold_off(state, now + self.throttle_wait), None))
        log.warning(
            "The Flex Web Service throttled this token (1018): no process sends with it for %.0f s",
            self.throttle_wait,
        )

    async def athrottled(self) -> None:
        """``throttled`` for the event loop (the store is called in a thread)."""
        await _in_thread(self.throttled)

    # -- waiting for a turn -------------------------------------------------------------------------

    def _pause(self, grant: Grant, waited: float, max_wait: float | None) -> float:
        if grant.reason in ("tight", "free"):
            raise BudgetTight(grant.reason)
        pause = later(grant.wait)
        if max_wait is not None and waited + pause > max_wait:
            raise BudgetBusy(grant)
        if pause >= _LOG_WAITS_FROM:
            log.info("Waiting %.1f s for the token's shared request budget (%s)", pause, grant.reason)
        return pause

    @contextlib.contextmanager
    def turn(
        self, max_wait: float | None = None, keep_spare: int = 0, urgent: bool = False
    ) -> Iterator[None]:
        """Block until this process holds the token's turn; give it back when the block ends.

        End the block when the answer's head has arrived, not after a long body.

        :param max_wait: seconds to wait at most (``BudgetBusy`` beyond); None waits as long as needed.
        :param keep_spare: a poll: raise ``BudgetTight`` rather than take a turn that leaves fewer spare
            requests than this in the window, and let waiting SendRequests go first.
        :param urgent: a SendRequest: polls let it go first while it waits.
        """
        request = Ask(uuid.uuid4().hex, keep_spare, urgent=urgent)
        started = time.monotonic()
        while not (grant := self.ask(request)).granted:
            time.sleep(self._pause(grant, time.monotonic() - started, max_wait))
        try:
            yield
        finally:
            self.give_back(request.holder)

    @contextlib.asynccontextmanager
    async def aturn(
        self, max_wait: float | None = None, keep_spare: int = 0, peek: bool = False
    ) -> AsyncIterator[None]:
        """``turn`` for the event loop: the store is called in a thread, the waits are ``asyncio.sleep``.

        :param max_wait: seconds to wait at most (``BudgetBusy`` beyond); None waits as long as needed.
        :param keep_spare: raise ``BudgetTight`` instead of taking a turn that would leave fewer spare
            requests than this in the window.
        :param peek: raise ``BudgetTight`` as soon as a turn is free, taking nothing.
        """
        request = Ask(uuid.uuid4().hex, keep_spare, peek)
        started = time.monotonic()
        while not (grant := await _in_thread(self.ask, request)).granted:
            await asyncio.sleep(self._pause(grant, time.monotonic() - started, max_wait))
        try:
            yield
        finally:
            await _in_thread(self.give_back, request.holder)


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_STORE_THREADS, function, *args)


_STORE: BudgetStore | None = None
_STORE_LOCK = threading.Lock()


def shared_store() -> BudgetStore:
    """This process's store, as Airflow's configuration names it (built once; may load a connection)."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            from airflow.sdk import BaseHook, conf

            _STORE = store_from_config(
                conf.get(SECTION, "rate_limit_conn_id", fallback="") or "",
                conf.get(SECTION, "rate_limit_folder", fallback="") or "",
                BaseHook.get_connection,
            )
            log.debug("Flex token budgets are kept in %r", _STORE)
        return _STORE


__all__ = ["JITTER", "BudgetBusy", "BudgetTight", "TokenBudget", "later", "shared_store", "token_key"]
