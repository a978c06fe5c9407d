"""IBFlexStatementTrigger: wait in the triggerer until a statement is ready, without a worker slot.

The async transport of the protocol core. It polls GetStatement with httpx, reads only the head of
each response (enough to tell an envelope from the start of a statement), closes it, and backs off.
It never calls SendRequest, never writes to storage and never carries the statement: its one event
says ready, poll, error or timeout, and the worker then downloads.

Every request takes a turn of the token's request budget, shared with every worker and triggerer
(``pacing``), and only when it can be sent at once (a place for it in the loop's requests in flight
comes first); its head must arrive within one deadline. A poll that finds the statement ready costs a
second request for the download, so when the token's budget is nearly spent the trigger does not
poll: it reserves the free turn for the worker and hands it over (event ``poll``), and the worker's one
GetStatement then lands the statement if it is ready. Whatever goes wrong (a store down past the
deadline, anything unexpected) becomes an ``error`` event: ``run`` never raises.

All triggers in one event loop share one httpx client (one connection pool and TLS context), so a
thousand of them cost little.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_provider_ibflex import logredact
from airflow_provider_ibflex.pacing import (
    HANDOFF_RESERVATION,
    BudgetBusy,
    BudgetStoreUnavailable,
    BudgetTight,
    TokenBudget,
    token_key,
)
from airflow_provider_ibflex.pacing.budget import Grant
from airflow_provider_ibflex.protocol import (
    FlexError,
    Outcome,
    ResponseReader,
    describe,
    get_statement_params,
    redact,
    trusted_statement_url,
)
from airflow_provider_ibflex.settings import FlexSettings, load_settings
from airflow_provider_ibflex.tls import certificate_outcome, httpx_verify, is_certificate_error

log = logging.getLogger(__name__)
T = TypeVar("T")

# Requests in flight per event loop. httpcore's pool does work quadratic in the requests it holds
# (measured with 1,000 triggers: 32 in flight cost 6.1 ms of CPU per poll, 8 cost 4.4 ms), and the
# service is not meant for bursts: 8 at a time still carry dozens of polls per second.
MAX_IN_FLIGHT = 8
# How far the jitter may move a wait, as a fraction of it.
JITTER = 0.1
# The polling schedule: the first wait, each next one times the factor, up to the cap (seconds).
DEFAULT_POKE_INTERVAL = 10.0
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_MAX_POKE_INTERVAL = 120.0


class _LoopResources:
    """The httpx client and in-flight gate shared by every trigger of one event loop."""

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT),
            follow_redirects=False,
            verify=httpx_verify(),
        )
        self.gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        # Triggers of one token in this loop queue here, first come first served, so that only one of
        # them at a time asks the shared store for the token's turn; it counts the others as demand.
        self.token_locks: dict[str, asyncio.Lock] = {}
        self.waiting: dict[str, int] = {}


_RESOURCES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = weakref.WeakKeyDictionary()


def _loop_resources() -> _LoopResources:
    loop = asyncio.get_running_loop()
    resources = _RESOURCES.get(loop)
    if resources is None:
        resources = _RESOURCES[loop] = _LoopResources()
    return resources


def next_interval(current: float, factor: float, cap: float) -> float:
    """The poll interval after ``current``: multiplied by ``factor``, at most ``cap``.

    :param current: the interval just used.
    :param factor: the backoff factor (1 for a constant interval).
    :param cap: the largest interval.
    """
    return min(current * factor, cap)


def jittered(seconds: float) -> float:
    """``seconds`` moved randomly by up to ``JITTER`` of itself, so many triggers do not poll in step.

    :param seconds: the nominal wait.
    """
    return max(seconds * (1 + random.uniform(-JITTER, JITTER)), 0.0)


def _load_blocking(conn_id: str) -> tuple[FlexSettings, TokenBudget]:
    settings = load_settings(conn_id)
    return settings, TokenBudget(settings)


async def load_connection(conn_id: str) -> tuple[FlexSettings, TokenBudget]:
    """Load an ``ibflex`` connection, validate it and find its token's budget, without blocking the loop.

    The sync API runs in asgiref's ``sync_to_async`` thread, as Airflow's own triggers load theirs: in
    a triggerer of Airflow 3.0 and 3.1 the connection comes from the supervisor through ``async_to_sync``,
    which reaches the triggerer's loop only from such a thread (from any other it would run the request
    on a loop of its own, away from the supervisor's socket). Loading a connection also registers its
    password with Airflow's secrets masker, which recompiles one pattern of every secret it knows (tens
    of milliseconds once a triggerer holds hundreds of tokens): that never holds the loop either, and
    the one thread keeps several compiles from starving the loop of the GIL. The budget's store may load
    a connection too, so it is found in the same call.

    :param conn_id: the connection id.
    """
    return await sync_to_async(_load_blocking, thread_sensitive=True)(conn_id)


async def poll_statement(
    settings: FlexSettings,
    budget: TokenBudget,
    reference_code: str,
    url: str | None = None,
    *,
    max_wait: float | None = None,
    keep_spare: int = 0,
    peek: bool = False,
    holder: str | None = None,
) -> Outcome:
    """One GetStatement in the token's shared budget, reading only the response's head.

    Never raises for transport errors (they are a ``retry`` outcome). Raises ``BudgetTight`` when a
    turn is free but not to be taken (see ``TokenBudget.aturn``; the turn is then reserved under
    ``holder``), ``BudgetBusy`` when no turn comes within ``max_wait`` (every wait counts: this loop's
    queue for the token, a place for the request, the token's turn) and ``BudgetStoreUnavailable``
    when the budget's store stayed unreachable that long.

    :param settings: the connection's settings.
    :param budget: the token's request budget.
    :param reference_code: the code SendRequest returned.
    :param url: the GetStatement URL from SendRequest, used only if trusted.
    :param max_wait: seconds to wait for a turn at most.
    :param keep_spare: poll only if this many requests would still fit in the window afterwards.
    :param peek: take no turn: raise ``BudgetTight`` as soon as one is free.
    :param holder: the turn's id, under which a free turn not taken is reserved for the worker.
    """
    params = get_statement_params(settings.token, reference_code, settings.version)
    target = trusted_statement_url(url, settings.endpoints)
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout, pool=None)
    headers = {"User-Agent": settings.user_agent}
    resources = _loop_resources()
    started = time.monotonic()
    async with _queued_for_token(resources, token_key(settings.token), max_wait) as waiting_behind:
        remaining = None if max_wait is None else max_wait - (time.monotonic() - started)
        turn = budget.aturn(
            remaining,
            keep_spare,
            peek,
            slot=resources.gate,
            holder=holder,
            weight=1 + waiting_behind(),
            reserve=HANDOFF_RESERVATION if keep_spare or peek else 0.0,
        )
        async with turn:
            try:
                # One deadline for the head, DNS and connecting included: the lease is renewed
                # meanwhile, and a request abandoned here is counted when its turn is given back.
                outcome = await _within(
                    _read_head(resources.client, target, params, headers, timeout, settings),
                    budget.head_deadline,
                )
            except asyncio.TimeoutError:
                outcome = Outcome("retry", f"no answer within {budget.head_deadline:.0f} s")
            except httpx.HTTPError as exc:
                if is_certificate_error(exc):
                    outcome = certificate_outcome(target)
                else:
                    outcome = Outcome("retry", redact(f"{type(exc).__name__}: {exc}", settings.token))
    if outcome.kind == "throttled":
        await budget.athrottled()
    return outcome


async def _within(awaitable: Awaitable[T], seconds: float) -> T:
    """``awaitable``'s result, or ``asyncio.TimeoutError`` after ``seconds`` (without a task of its
    own where Python allows: one per poll adds up over a thousand triggers)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


@contextlib.asynccontextmanager
async def _queued_for_token(
    resources: _LoopResources, key: str, max_wait: float | None
) -> AsyncIterator[Callable[[], int]]:
    """This loop's queue for one token: first come, first served, within ``max_wait``. Yields how
    many triggers wait behind the holder (demand the shared budget should count)."""
    lock = resources.token_locks.setdefault(key, asyncio.Lock())
    if lock.locked():
        resources.waiting[key] = resources.waiting.get(key, 0) + 1
        try:
            await asyncio.wait_for(lock.acquire(), None if max_wait is None else max(max_wait, 0))
        except asyncio.TimeoutError:
            raise BudgetBusy(Grant(False, 0.0, "queued")) from None
        finally:
            resources.waiting[key] -= 1
    else:
        await lock.acquire()  # nobody ahead: no timer needed
    try:
        yield lambda: resources.waiting.get(key, 0)
    finally:
        lock.release()


async def _read_head(
    client: httpx.AsyncClient,
    url: str,
    params: dict[str, str],
    headers: dict[str, str],
    timeout: httpx.Timeout,
    settings: FlexSettings,
) -> Outcome:
    async with client.stream("GET", url, params=params, headers=headers, timeout=timeout) as response:
        reader = ResponseReader(response.status_code, "get", settings.endpoints)
        if not reader.decided:
            async for chunk in response.aiter_bytes():
                if reader.feed(chunk):
                    break
        return reader.verdict()


class IBFlexStatementTrigger(BaseTrigger):
    """Poll GetStatement until the statement is ready, an error is final, or the deadline passes.

    Events: ``ready`` (the statement is there: download it), ``poll`` (the token's budget is nearly
    spent: make the next GetStatement on the worker, where it doubles as the download), ``error``
    (with ``code``) and ``timeout``; each with ``message``, ``reference_code``, ``deadline`` and
    ``interval`` (the current wait between polls, to carry the backoff over a new deferral).

    :param reference_code: the code SendRequest returned.
    :param deadline: absolute time (Unix seconds) after which the trigger reports ``timeout``; kept
        through serialization, so a triggerer restart does not extend the wait.
    :param ibflex_conn_id: the ``ibflex`` connection (loaded here; the token is never in the kwargs).
    :param url: the GetStatement URL from SendRequest, used only if trusted.
    :param poke_interval: the first wait between polls, in seconds.
    :param backoff_factor: each wait is the previous one times this, up to ``max_poke_interval``.
    :param max_poke_interval: the cap of the wait between polls, in seconds.
    :param initial_wait: seconds to wait before the first poll (the sensor has just polled).
    :param handoff: do not poll at all: fire ``poll`` as soon as the token has a free turn (the worker
        saw the statement ready but found no turn to download it).
    """

    def __init__(
        self,
        reference_code: str,
        deadline: float,
        ibflex_conn_id: str = "ibflex_default",
        url: str | None = None,
        poke_interval: float = DEFAULT_POKE_INTERVAL,
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
        max_poke_interval: float = DEFAULT_MAX_POKE_INTERVAL,
        initial_wait: float = 0.0,
        handoff: bool = False,
    ) -> None:
        super().__init__()
        self.reference_code = str(reference_code)
        self.deadline = float(deadline)
        self.ibflex_conn_id = ibflex_conn_id
        self.url = url
        self.poke_interval = float(poke_interval)
        self.backoff_factor = float(backoff_factor)
        self.max_poke_interval = float(max_poke_interval)
        self.initial_wait = float(initial_wait)
        self.handoff = bool(handoff)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "reference_code": self.reference_code,
                "deadline": self.deadline,
                "ibflex_conn_id": self.ibflex_conn_id,
                "url": self.url,
                "poke_interval": self.poke_interval,
                "backoff_factor": self.backoff_factor,
                "max_poke_interval": self.max_poke_interval,
                "initial_wait": self.initial_wait,
                "handoff": self.handoff,
            },
        )

    def _event(self, status: str, message: str, interval: float, **extra: Any) -> TriggerEvent:
        payload: dict[str, Any] = {
            "status": status,
            "message": message,
            "reference_code": self.reference_code,
            "deadline": self.deadline,
            "interval": interval,
        }
        return TriggerEvent({**payload, **extra})

    def _timeout(self, polls: int, interval: float) -> TriggerEvent:
        return self._event(
            "timeout",
            f"statement {self.reference_code} not ready by the deadline after {polls} polls",
            interval,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        logredact.install()
        try:
            event = await self._wait()
        except Exception as exc:  # a trigger that raises fails every task on it, ignoring soft_fail
            reason = redact(f"{type(exc).__name__}: {exc}")  # no traceback: it could hold a URL
            message = f"waiting for statement {self.reference_code} failed unexpectedly: {reason}"
            self.log.error("%s", message)
            event = self._event("error", message, self.poke_interval, unexpected=True)
        yield event

    async def _wait(self) -> TriggerEvent:
        """Poll until there is something to tell the worker; return that event."""
        interval = self.poke_interval
        try:
            settings, budget = await load_connection(self.ibflex_conn_id)
        except (FlexError, ValueError) as exc:
            return self._event("error", str(exc), interval)
        except Exception as exc:  # a missing connection, a secrets backend failure
            return self._event("error", f"could not load connection {self.ibflex_conn_id!r}: {exc}", interval)
        polls = 0
        if self.initial_wait > 0:
            # Wider jitter on the first wait: triggers deferred together (a backfill, a mapped task)
            # spread out instead of polling in the same instant.
            first = self.initial_wait * random.uniform(0.5, 1.5)
            await asyncio.sleep(min(first, max(self.deadline - time.time(), 0)))
        while True:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                return self._timeout(polls, interval)
            # A free turn this poll does not take is reserved, under this id, for the worker.
            holder = uuid.uuid4().hex
            try:
                # Poll only while a ready answer would leave a turn for the download in the window.
                outcome = await poll_statement(
                    settings,
                    budget,
                    self.reference_code,
                    self.url,
                    max_wait=remaining,
                    keep_spare=1,
                    peek=self.handoff,
                    holder=holder,
                )
            except BudgetTight:
                message = (
                    f"the token has a free turn for statement {self.reference_code}, reserved for the "
                    "worker: its next GetStatement lands the statement if it is ready"
                )
                return self._event("poll", message, interval, reservation=holder)
            except BudgetStoreUnavailable as exc:
                return self._event("error", str(exc), interval, store=True)
            except BudgetBusy:
                return self._timeout(polls, interval)
            polls += 1
            if outcome.kind == "statement":
                return self._event(
                    "ready", f"statement {self.reference_code} is ready (after {polls} polls)", interval
                )
            if outcome.kind == "fatal":
                return self._event(
                    "error", redact(describe(outcome), settings.token), interval, code=outcome.code
                )
            wait = interval
            interval = next_interval(interval, self.backoff_factor, self.max_poke_interval)
            if outcome.kind in ("retry", "throttled"):
                self.log.warning("Transient answer for %s: %s", self.reference_code, describe(outcome))
            else:
                # A line per poll costs a thousand triggers dearly (each is rendered and masked): one
                # when the wait changes, the others at debug level.
                level = logging.INFO if polls == 1 or interval != wait else logging.DEBUG
                self.log.log(
                    level, "Statement %s: %s; next poll in %.0f s", self.reference_code, outcome.message, wait
                )
            await asyncio.sleep(min(jittered(wait), max(self.deadline - time.time(), 0)))
