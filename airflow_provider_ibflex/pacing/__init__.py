"""Per-token request budget shared by every process that uses the token: workers and triggerers alike.

``TokenBudget(settings)`` gives a transport its turns: ``with budget.turn(): send`` (the Hook) or
``async with budget.aturn(): send`` (the trigger). A turn is a lease on the token, renewed while the
request is in flight and given back when the answer's head arrives (or the request is abandoned,
cancelled or its task killed); the next turn comes ``min_interval`` after that answer and within the
window's allowance, whichever process asks. After a 1018, ``budget.throttled()`` holds the token off
for every process. The arithmetic is ``pacing.budget`` (pure); the state lives in a store shared by all
processes (``pacing.stores``), chosen by Airflow's configuration:

- ``[ibflex] rate_limit_conn_id``: a ``redis`` or ``postgres`` connection, for a budget shared across
  machines;
- ``[ibflex] rate_limit_folder``: the file store's folder when no connection is set (default
  ``$AIRFLOW_HOME/ibflex/rate-limits``, shared by every process on one machine).

A store in trouble is waited out, with capped, jittered backoff, until the caller's deadline: nothing
is ever sent without a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from airflow_provider_ibflex.pacing.budget import (
    JITTER,
    Ask,
    BudgetState,
    Grant,
    Limits,
    declare,
    extend,
    hold_off,
    release,
    token_key,
    try_acquire,
)
from airflow_provider_ibflex.pacing.stores import SECTION, BudgetStore, BudgetStoreError, store_from_config

if TYPE_CHECKING:
    from airflow_provider_ibflex.settings import FlexSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Waits this long or longer are worth a line in the task's log.
_LOG_WAITS_FROM = 5.0
# Threads for the trigger's store calls: a store may block (flock, a round trip to Redis).
_STORE_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ibflex-budget")
# A lease lasts this long unless renewed; it is renewed every third of it while the request is in
# flight, so it lapses soon after its process dies and never under a live request.
LEASE_SECONDS = 20.0
# Backoff between attempts at a store in trouble.
_STORE_BACKOFF_INITIAL = 0.5
_STORE_BACKOFF_MAX = 10.0
# How long a turn handed to a worker (the trigger's ``poll`` event) is held for it.
HANDOFF_RESERVATION = 30.0
# When this process last sent with each token (store clock): a store that forgot it is noticed.
_LAST_USE: dict[str, float] = {}


class BudgetBusy(Exception):
    """The token's next turn is further away than the caller was willing to wait; nothing was sent.

    :param grant: the store's last answer (its ``wait`` and ``reason``).
    """

    def __init__(self, grant: Grant) -> None:
        super().__init__(
            f"the token's request budget is busy ({grant.reason}); next turn in about {grant.wait:.0f} s"
        )
        self.grant = grant


class BudgetStoreUnavailable(BudgetBusy):
    """The budget's store stayed unreachable until the caller's deadline; nothing was sent.

    :param message: what failed, naming the store and its setting.
    """

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.grant = Grant(False, 0.0, "in_flight")


class BudgetTight(Exception):
    """A turn is free, but the caller asked not to take it (a peek, or too few spare requests left)."""

    def __str__(self) -> str:
        return "the token's budget has no turn to spare"


def later(seconds: float) -> float:
    """``seconds`` stretched by up to ``JITTER`` of itself, never shortened.

    :param seconds: the nominal wait.
    """
    return max(seconds, 0.0) * (1 + random.uniform(0, JITTER))


class _Wait:
    """One caller's wait for a turn: since when, and until when at most.

    :param max_wait: seconds to wait at most; None waits as long as needed.
    """

    def __init__(self, max_wait: float | None) -> None:
        self.started = time.monotonic()
        self.max_wait = max_wait
        # The store's last error while this wait lasts (cleared when the store answers again).
        self.store_error: BudgetStoreError | None = None

    def remaining(self) -> float | None:
        if self.max_wait is None:
            return None
        return self.max_wait - (time.monotonic() - self.started)

    def pause(self, grant: Grant) -> float:
        """How long to sleep before asking again, or why not to ask again."""
        self.store_error = None
        if grant.reason in ("tight", "free"):
            raise BudgetTight(grant.reason)
        pause = later(grant.wait)
        remaining = self.remaining()
        if remaining is not None and pause > remaining:
            raise BudgetBusy(grant)
        if pause >= _LOG_WAITS_FROM:
            log.info("Waiting %.1f s for the token's shared request budget (%s)", pause, grant.reason)
        return pause

    def store_retry(self) -> dict[str, Any]:
        """Tenacity's terms for a store in trouble: capped, jittered backoff until the deadline."""
        remaining = self.remaining()
        stop = tenacity.stop_never if remaining is None else tenacity.stop_after_delay(max(remaining, 0))
        return {
            "retry": tenacity.retry_if_exception_type(BudgetStoreError),
            "wait": tenacity.wait_exponential(multiplier=_STORE_BACKOFF_INITIAL, max=_STORE_BACKOFF_MAX)
            + tenacity.wait_random(0, _STORE_BACKOFF_INITIAL),
            "stop": stop,
            "before_sleep": self._store_trouble,
            "reraise": True,
        }

    def _store_trouble(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, BudgetStoreError):
            self.store_error = error
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "The token budget store is unreachable (%s; it is set by %s); nothing is sent without a "
            "turn: asking again in %.1f s",
            error,
            store_source(),
            wait,
        )

    def unavailable(self, error: BudgetStoreError | None = None) -> BudgetStoreUnavailable:
        """The store stayed unreachable until the deadline."""
        waited = time.monotonic() - self.started
        return BudgetStoreUnavailable(
            f"the token budget store stayed unreachable for {waited:.0f} s, until the deadline "
            f"({error or self.store_error}; it is set by {store_source()}); nothing was sent. Check "
            "that store, or the setting."
        )


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
            lease_seconds=LEASE_SECONDS,
        )
        self.throttle_wait = settings.throttle_wait
        # One deadline for a request's head, DNS and connecting included (see the transports).
        self.head_deadline = settings.connect_timeout + settings.read_timeout
        self.store = store if store is not None else shared_store()
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    # -- one store transaction each ------------------------------------------------------------------

    def ask(self, ask: Ask) -> Grant:
        """Try once to take (or peek at) the token's next turn.

        :param ask: who asks and on what terms.
        :raises BudgetStoreError: the store could not be reached.
        """

        def change(state: BudgetState, now: float) -> tuple[BudgetState, tuple[Grant, float]]:
            started = self.store.started
            state, grant = try_acquire(state, self.limits, now, ask, started, _LAST_USE.get(self.key))
            return state, (grant, now)

        grant, now = self.store.update(self.key, change)
        if grant.granted:
            _LAST_USE[self.key] = now
            with self._held_lock:
                self._held.add(ask.holder)
        return grant

    def renew(self, holder: str) -> None:
        """Renew the lease of ``holder``: its request is still in flight.

        :param holder: the turn's id.
        """
        self.store.update(
            self.key, lambda state, now: (extend(state, now, holder, self.limits.lease_seconds), None)
        )

    def give_back(self, holder: str) -> None:
        """End the turn of ``holder``: its answer has arrived, or it was abandoned.

        :param holder: the turn's id.
        """

        def change(state: BudgetState, now: float) -> tuple[BudgetState, float]:
            state, limits = declare(state, self.limits, now)
            return release(state, now, holder, limits), now

        _LAST_USE[self.key] = self.store.update(self.key, change)
        with self._held_lock:
            self._held.discard(holder)

    def throttled(self) -> None:
        """The service answered 1018: hold the token off for ``throttle_wait`` in every process."""
        try:
            for attempt in tenacity.Retrying(**_Wait(self.throttle_wait).store_retry()):
                with attempt:
                    self.store.update(
                        self.key, lambda state, now: (hold_off(state, now + self.throttle_wait), None)
                    )
        except BudgetStoreError as exc:  # no process can take a turn from a store that is down
            log.warning("Could not record the 1018 hold-off in the token budget store (%s)", exc)
        log.warning(
            "The Flex Web Service throttled this token (1018): no process sends with it for %.0f s",
            self.throttle_wait,
        )

    async def athrottled(self) -> None:
        """``throttled`` for the event loop (the store is called in a thread)."""
        await _in_thread(self.throttled)

    def give_back_all(self, timeout: float = 5.0) -> None:
        """Give back every turn this object holds (its task is being killed): harmless for a turn
        whose lease another process holds by now.

        Runs in a thread of its own, waited for at most ``timeout`` seconds: it is called from a
        signal handler, which may have interrupted this process in the middle of a store transaction.

        :param timeout: seconds to wait for it at most.
        """
        with self._held_lock:
            held = list(self._held)
        if not held:
            return

        def give_back() -> None:
            for holder in held:
                with contextlib.suppress(BudgetStoreError):
                    self.give_back(holder)

        thread = threading.Thread(target=give_back, name="ibflex-give-back", daemon=True)
        thread.start()
        thread.join(timeout)

    def _give_back_quietly(self, holder: str) -> None:
        """``give_back``, retried while the lease could still matter; a failure is only logged (the
        lease lapses by itself)."""
        with contextlib.suppress(BudgetStoreError):
            return self.give_back(holder)  # the common case, without the retry machinery
        try:
            for attempt in tenacity.Retrying(**_Wait(self.limits.lease_seconds).store_retry()):
                with attempt:
                    self.give_back(holder)
        except BudgetStoreError as exc:
            log.warning("Could not give the token's turn back (%s); its lease lapses by itself", exc)

    # -- waiting for a turn -------------------------------------------------------------------------

    def _take(self, request: Ask, wait: _Wait) -> Grant:
        with contextlib.suppress(BudgetStoreError):
            return self.ask(request)  # the common case, without the retry machinery
        try:
            for attempt in tenacity.Retrying(**wait.store_retry()):
                with attempt:
                    return self.ask(request)
        except BudgetStoreError as exc:
            raise wait.unavailable(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def turn(
        self,
        max_wait: float | None = None,
        keep_spare: int = 0,
        urgent: bool = False,
        holder: str | None = None,
    ) -> Iterator[None]:
        """Block until this process holds the token's turn; give it back when the block ends.

        End the block when the answer's head has arrived, not after a long body. While the block
        runs, the lease is renewed.

        :param max_wait: seconds to wait at most (``BudgetBusy`` beyond; ``BudgetStoreUnavailable``
            when the store stayed unreachable); None waits as long as needed.
        :param keep_spare: a poll: raise ``BudgetTight`` rather than take a turn that leaves fewer spare
            requests than this in the window, and let waiting SendRequests go first.
        :param urgent: a SendRequest: polls let it go first while it waits.
        :param holder: the turn's id: a reservation handed over (the trigger's ``poll`` event), or new.
        """
        request = Ask(holder or uuid.uuid4().hex, keep_spare, urgent=urgent)
        wait = _Wait(max_wait)
        while not (grant := self._take(request, wait)).granted:
            time.sleep(wait.pause(grant))
        try:
            with self._renewing(request.holder):
                yield
        finally:
            self._give_back_quietly(request.holder)

    @contextlib.contextmanager
    def _renewing(self, holder: str) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.limits.lease_seconds / 3):
                with contextlib.suppress(BudgetStoreError):
                    self.renew(holder)

        thread = threading.Thread(target=beat, name="ibflex-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextlib.asynccontextmanager
    async def aturn(
        self,
        max_wait: float | None = None,
        keep_spare: int = 0,
        peek: bool = False,
        *,
        slot: asyncio.Semaphore | None = None,
        holder: str | None = None,
        weight: int = 1,
        reserve: float = 0.0,
    ) -> AsyncIterator[None]:
        """``turn`` for the event loop: the store is called in a thread, the waits are ``asyncio.sleep``.

        A turn is taken only when the request can be sent at once: with ``slot``, each attempt first
        takes one of the loop's places for requests in flight, and keeps it only with the turn.
        Cancelled at any point, it gives back whatever turn it got.

        :param max_wait: seconds to wait at most (``BudgetBusy`` beyond, ``BudgetStoreUnavailable``
            when the store stayed unreachable); None waits as long as needed.
        :param keep_spare: raise ``BudgetTight`` instead of taking a turn that would leave fewer spare
            requests than this in the window.
        :param peek: raise ``BudgetTight`` as soon as a turn is free, taking nothing.
        :param slot: the event loop's places for requests in flight.
        :param holder: the turn's id (by default a new one): a free turn not taken is reserved
            under it when ``reserve`` is given.
        :param weight: how many callers this one stands for while it waits.
        :param reserve: see ``Ask.reserve``.
        """
        request = Ask(holder or uuid.uuid4().hex, keep_spare, peek, weight=weight, reserve=reserve)
        wait = _Wait(max_wait)
        while not (grant := await self._atake(request, wait, slot)).granted:
            await asyncio.sleep(wait.pause(grant))
        try:
            # Most requests are answered long before the first renewal is due: it is only scheduled.
            renewal = _Renewal(self, request.holder)
            try:
                yield
            finally:
                renewal.stop()
        finally:
            try:
                # In a store thread, whatever happens to this task: a cancelled wait still gives back.
                giving = _STORE_THREADS.submit(self._give_back_quietly, request.holder)
                await asyncio.shield(asyncio.wrap_future(giving))
            finally:
                if slot is not None:
                    slot.release()

    async def _atake(self, request: Ask, wait: _Wait, slot: asyncio.Semaphore | None) -> Grant:
        """One attempt at a turn, holding a place in ``slot`` meanwhile and keeping it only with the
        turn; a store in trouble is retried with the place released."""
        with contextlib.suppress(BudgetStoreError):
            return await self._atake_once(request, wait, slot)  # the common case, without tenacity
        try:
            async for attempt in tenacity.AsyncRetrying(**wait.store_retry()):
                with attempt:
                    return await self._atake_once(request, wait, slot)
        except BudgetStoreError as exc:
            raise wait.unavailable(exc) from None
        except BudgetBusy:
            if wait.store_error is not None:  # no place for the request in time, the store down anyway
                raise wait.unavailable() from None
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _atake_once(self, request: Ask, wait: _Wait, slot: asyncio.Semaphore | None) -> Grant:
        if slot is not None:
            await _acquire(slot, wait)
        try:
            grant = await self._aask(request)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        if not grant.granted and slot is not None:
            slot.release()
        return grant

    async def _aask(self, request: Ask) -> Grant:
        """``ask`` in a store thread. Cancelled meanwhile, a turn it was granted is given back."""
        future = _STORE_THREADS.submit(self.ask, request)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(functools.partial(self._abandoned, request.holder))
            raise

    def _abandoned(self, holder: str, future: Future[Grant]) -> None:
        if not future.cancelled() and future.exception() is None and future.result().granted:
            self._give_back_quietly(holder)


class _Renewal:
    """Renews a turn's lease every third of it, in a store thread, until stopped.

    :param budget: the token's budget.
    :param holder: the turn's id.
    """

    def __init__(self, budget: TokenBudget, holder: str) -> None:
        self.budget, self.holder = budget, holder
        self.loop = asyncio.get_running_loop()
        self.handle = self.loop.call_later(budget.limits.lease_seconds / 3, self._due)

    def _due(self) -> None:
        _STORE_THREADS.submit(self._renew)
        self.handle = self.loop.call_later(self.budget.limits.lease_seconds / 3, self._due)

    def _renew(self) -> None:
        with contextlib.suppress(BudgetStoreError):
            self.budget.renew(self.holder)

    def stop(self) -> None:
        self.handle.cancel()


async def _acquire(slot: asyncio.Semaphore, wait: _Wait) -> None:
    if not slot.locked():
        await slot.acquire()  # a place is free: no timer needed
        return
    remaining = wait.remaining()
    try:
        await asyncio.wait_for(slot.acquire(), remaining if remaining is None else max(remaining, 0))
    except asyncio.TimeoutError:
        raise BudgetBusy(Grant(False, 0.0, "in_flight")) from None


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_STORE_THREADS, function, *args)


_STORE: BudgetStore | None = None
_STORE_SOURCE = "the default file store"
_STORE_LOCK = threading.Lock()


def store_source() -> str:
    """Which setting chose this process's store, for messages."""
    return _STORE_SOURCE


def shared_store() -> BudgetStore:
    """This process's store, as Airflow's configuration names it (built once; may load a connection)."""
    global _STORE, _STORE_SOURCE
    with _STORE_LOCK:
        if _STORE is None:
            from airflow.providers.common.compat.sdk import BaseHook, conf

            conn_id = conf.get(SECTION, "rate_limit_conn_id", fallback="") or ""
            folder = conf.get(SECTION, "rate_limit_folder", fallback="") or ""
            _STORE = store_from_config(conn_id, folder, BaseHook.get_connection)
            if conn_id.strip():
                _STORE_SOURCE = f"[{SECTION}] rate_limit_conn_id = {conn_id.strip()!r}"
            elif folder.strip():
                _STORE_SOURCE = f"[{SECTION}] rate_limit_folder = {folder.strip()!r}"
            log.debug("Flex token budgets are kept in %r", _STORE)
        return _STORE


__all__ = [
    "HANDOFF_RESERVATION",
    "JITTER",
    "LEASE_SECONDS",
    "BudgetBusy",
    "BudgetStoreError",
    "BudgetStoreUnavailable",
    "BudgetTight",
    "TokenBudget",
    "later",
    "shared_store",
    "store_source",
    "token_key",
]
