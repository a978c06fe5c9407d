"""A token's request budget as pure arithmetic over a small JSON-safe state, with the clock supplied.

The service allows each token one request per second and ten in any minute, across every process that
uses it. The state lives in a shared store (``pacing.stores``); every process changes it with these
functions inside one atomic transaction of that store, on the store's clock. Nothing here sleeps,
locks or reads a clock, so the arithmetic is tested on its own and shared by every transport.

Three rules keep requests apart however the network delays them:

- a *lease*: one request per token in flight at a time, across all processes. Its holder renews it
  while the request is in flight (``extend``), so it lapses soon after a process dies, never while a
  live process's request is still out;
- *spacing from the answer*: the next request may start ``min_interval`` after the previous one was
  answered (the service has certainly seen it by then), and the window counts answers too; an answer
  that comes after its lease lapsed is still counted (``release``);
- a *hold-off*: after a 1018 no process sends with the token before the hold-off ends.

The limits belong to the token, not to a connection: every process declares its own, and all of them
follow the strictest limits any process declared in the last ``DECLARATION_TTL`` seconds.

Callers that wait for a turn say so in the state (a place in the queue, which lapses if they stop
asking), with how many callers they stand for. Polls, which ask to keep spare turns, count them as
demand: a poll takes a turn only if the window still has one for every waiting caller and one more
(for its own download, should the poll find the statement ready). Polls let a waiting SendRequest go
first: it starts a statement's generation, while a poll made meanwhile would mostly find statements
not ready yet. A turn handed to a worker is reserved for it the same way, until the worker asks.

A state the store has lost (a restart without persistence, a flush, a failover) must not let a burst
through: the window is taken as full when the store started (``forgotten``) or when the state was
created while this process had used the token more recently (``younger_than``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Literal

# Never ask a store again sooner than this: with no spacing configured, a busy token is not a spin.
_MIN_WAIT = 0.02
GrantReason = Literal["granted", "free", "hold_off", "in_flight", "spacing", "window", "queued", "tight"]
# How far a caller may stretch a wait at random (as a fraction of it), so that callers told to wait
# for the same moment (the end of a hold-off above all) do not all ask again in the same instant.
JITTER = 0.1
# How long a waiting caller's place in the queue outlives its expected wait (then it lapses: its
# process has gone).
_QUEUE_GRACE = 2.0
# How long a process's declaration of its limits binds every process using the token.
DECLARATION_TTL = 900.0


@dataclass(frozen=True)
class Limits:
    """The budget of one token, as one connection declares it.

    :param min_interval: seconds from one request's answer to the next request.
    :param per_window: requests allowed in any ``window`` seconds (0: no limit).
    :param window: the length of the "minute" (60 s; shorter only to compress time in benchmarks).
    :param lease_seconds: how long a request's lease lasts unless its holder renews it (a process that
        died mid-request must not block the token for long).
    """

    min_interval: float = 1.0
    per_window: int = 10
    window: float = 60.0
    lease_seconds: float = 20.0

    def strictest(self, other: Limits) -> Limits:
        """Limits at least as strict as both (the longer spacing, the fewer requests per window).

        :param other: other limits of the same token.
        """
        counts = [n for n in (self.per_window, other.per_window) if n > 0]
        return replace(
            self,
            min_interval=max(self.min_interval, other.min_interval),
            per_window=min(counts) if counts else 0,
            window=max(self.window, other.window),
        )


@dataclass(frozen=True)
class Waiting:
    """A place in the token's queue.

    :param holder: who waits (a request's id, or a reservation's).
    :param until: when the place lapses unless renewed.
    :param urgent: a SendRequest: polls let it go first.
    :param weight: how many callers it stands for (a trigger counts the ones queued behind it).
    """

    holder: str
    until: float
    urgent: bool = False
    weight: int = 1


@dataclass(frozen=True)
class BudgetState:
    """What the store keeps for one token.

    :param sent: times of the latest requests (answer times once answered), oldest first: those in
        the window, and at least the last one.
    :param not_before: no request before this time (a 1018 hold-off).
    :param holder: who holds the lease of the request in flight, if any.
    :param lease_until: when that lease lapses.
    :param queued: callers waiting for a turn, and reservations.
    :param declared: limits processes declared, each with when the declaration lapses.
    :param created: when the store first kept this state (0: before this was recorded).
    :param accounted: the latest moment before which lost history was already taken into account
        (see ``forgotten`` and ``younger_than``): each loss is made up for once.
    """

    sent: tuple[float, ...] = ()
    not_before: float = 0.0
    holder: str | None = None
    lease_until: float = 0.0
    queued: tuple[Waiting, ...] = ()
    declared: tuple[tuple[Limits, float], ...] = ()
    created: float = 0.0
    accounted: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "sent": list(self.sent),
                "not_before": self.not_before,
                "holder": self.holder,
                "lease_until": self.lease_until,
                "queued": [[w.holder, w.until, w.urgent, w.weight] for w in self.queued],
                "declared": [
                    [limits.min_interval, limits.per_window, limits.window, until]
                    for limits, until in self.declared
                ],
                "created": self.created,
                "accounted": self.accounted,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> BudgetState:
        """Read a stored state; anything unreadable counts as a fresh token.

        :param text: the stored JSON, or None when the store has nothing yet.
        """
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                tuple(float(t) for t in data.get("sent", ())),
                float(data.get("not_before", 0.0)),
                data.get("holder") or None,
                float(data.get("lease_until", 0.0)),
                tuple(_waiting(entry) for entry in data.get("queued", ())),
                tuple(
                    (Limits(float(i), int(n), float(w)), float(until))
                    for i, n, w, until in data.get("declared", ())
                ),
                float(data.get("created", 0.0)),
                float(data.get("accounted", 0.0)),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


def _waiting(entry: Any) -> Waiting:
    holder, until, urgent, *rest = entry
    return Waiting(str(holder), float(until), bool(urgent), int(rest[0]) if rest else 1)


@dataclass(frozen=True)
class Grant:
    """The answer to one request for a turn.

    :param granted: True when the caller holds the lease now and may send.
    :param wait: seconds until asking again is worthwhile (0 when granted or free).
    :param reason: ``granted``; ``free`` (a peek found a turn available, nothing taken); why not
        (``hold_off``, ``in_flight``, ``spacing``, ``window``, ``queued``); or ``tight`` (a turn is
        free but taking it would leave fewer spare requests in the window than asked for).
    """

    granted: bool
    wait: float = 0.0
    reason: GrantReason = "granted"


@dataclass(frozen=True)
class Ask:
    """What a caller asks of the budget.

    :param holder: a unique id for this request (the lease's owner).
    :param keep_spare: take a turn only if at least this many more requests would still fit in the
        window afterwards, besides one for every caller waiting (a poll that finds the statement
        ready costs a second request for the download: when the budget is that tight, the poll is
        better made by the downloader); and let waiting SendRequests go first.
    :param peek: only find out whether a turn is free; take nothing.
    :param urgent: a SendRequest: while it waits, callers with ``keep_spare`` let it go first.
    :param weight: how many callers this one stands for while it waits.
    :param reserve: when a turn is free but not taken (``free`` or ``tight``), hold it for this many
        seconds for the caller this one hands it to (who asks with ``holder`` as its own id).
    """

    holder: str
    keep_spare: int = 0
    peek: bool = False
    urgent: bool = False
    weight: int = 1
    reserve: float = 0.0


def declare(state: BudgetState, limits: Limits, now: float) -> tuple[BudgetState, Limits]:
    """Record this process's limits for the token and return the limits everyone follows now: the
    strictest of every declaration still in force.

    :param state: the token's state.
    :param limits: this process's limits.
    :param now: the store's clock.
    """
    own = replace(limits, lease_seconds=Limits.lease_seconds)
    current = tuple((other, until) for other, until in state.declared if until > now)
    effective = limits
    for other, _ in current:
        effective = effective.strictest(other)
    # Renewed only once half its time has passed: most transactions then change nothing.
    if any(other == own and until - now > DECLARATION_TTL / 2 for other, until in current):
        if len(current) != len(state.declared) or not state.created:
            state = replace(state, declared=current, created=state.created or now)
        return state, effective
    declared = (*(entry for entry in current if entry[0] != own), (own, now + DECLARATION_TTL))
    return replace(state, declared=declared, created=state.created or now), effective


def forgotten(state: BudgetState, limits: Limits, now: float, store_started: float | None) -> BudgetState:
    """Take the window as full when the store started, if it started within the window and may have
    lost what it kept (a Redis restarted without persistence): whatever was sent before is unknown.

    :param state: the token's state.
    :param limits: the limits in force.
    :param now: the store's clock.
    :param store_started: when the store started, on its clock; None for a store that loses nothing.
    """
    if store_started is None or store_started <= state.accounted:
        return state
    # A state created since the start is part of the same loss: made up for here, once.
    state = replace(state, accounted=max(store_started, state.created))
    if now - store_started >= limits.window:
        return state
    return _assume_full(state, limits, store_started)


def younger_than(state: BudgetState, limits: Limits, now: float, last_use: float | None) -> BudgetState:
    """Take the window as full when the state was created, if that was after this process last sent
    with the token and within the window: the store forgot that request (a flush, a failover), and
    perhaps others'.

    :param state: the token's state.
    :param limits: the limits in force.
    :param now: the store's clock.
    :param last_use: when this process last sent with the token (store clock), if it did.
    """
    if last_use is None or state.created <= max(last_use, state.accounted) or now - last_use >= limits.window:
        return state
    return _assume_full(replace(state, accounted=state.created), limits, state.created)


def _assume_full(state: BudgetState, limits: Limits, at: float) -> BudgetState:
    assumed = (at,) * max(limits.per_window, 1)
    return replace(state, sent=tuple(sorted((*state.sent, *assumed))))


def earliest_start(state: BudgetState, limits: Limits, now: float) -> tuple[float, GrantReason]:
    """The earliest time a new request may start, ignoring the lease, and what decides it.

    :param state: the token's state.
    :param limits: the token's limits.
    :param now: the store's clock.
    """
    start, reason = now, "granted"
    candidates: list[tuple[float, GrantReason]] = [(state.not_before, "hold_off")]
    if state.sent:
        candidates.append((state.sent[-1] + limits.min_interval, "spacing"))
    if limits.per_window > 0 and len(state.sent) >= limits.per_window:
        candidates.append((state.sent[-limits.per_window] + limits.window, "window"))
    for time, why in candidates:
        if time > start:
            start, reason = time, why
    return start, reason  # type: ignore[return-value]


def spare_after_one(state: BudgetState, limits: Limits, now: float) -> float:
    """How many more requests would still fit in the window after one more now (inf: no limit).

    :param state: the token's state.
    :param limits: the token's limits.
    :param now: the store's clock.
    """
    if limits.per_window <= 0:
        return float("inf")
    recent = sum(1 for t in state.sent if t > now - limits.window)
    return limits.per_window - recent - 1


def demand(state: BudgetState) -> int:
    """How many callers wait for a turn, reservations included.

    :param state: the token's state.
    """
    return sum(waiting.weight for waiting in state.queued)


def try_acquire(
    state: BudgetState,
    limits: Limits,
    now: float,
    ask: Ask,
    store_started: float | None = None,
    last_use: float | None = None,
) -> tuple[BudgetState, Grant]:
    """Take the token's next turn if it is free now, else say how long to wait.

    :param state: the token's state.
    :param limits: this process's limits (the strictest declared by any process apply).
    :param now: the store's clock.
    :param ask: who asks, and on what terms.
    :param store_started: when the store started, if it may lose what it keeps (see ``forgotten``).
    :param last_use: when this process last sent with the token (see ``younger_than``).
    """
    state, limits = declare(state, limits, now)
    state = younger_than(forgotten(state, limits, now, store_started), limits, now, last_use)
    others = tuple(w for w in state.queued if w.until > now and w.holder != ask.holder)
    state = replace(state, queued=others)
    grant = _refusal(state, limits, now, ask)
    if grant is not None:
        if grant.wait > 0:
            place = Waiting(ask.holder, now + later_than(grant.wait) + _QUEUE_GRACE, ask.urgent, ask.weight)
            state = replace(state, queued=(*others, place))
        elif ask.reserve > 0:  # a free turn handed on: held for the one it is handed to
            state = replace(state, queued=(*others, Waiting(ask.holder, now + ask.reserve)))
        return state, grant
    sent = _trim((*state.sent, now), limits, now)
    lease = replace(state, sent=sent, holder=ask.holder, lease_until=now + limits.lease_seconds)
    return lease, Grant(True)


def later_than(wait: float) -> float:
    """The longest a caller told to wait ``wait`` may take to ask again (its jitter included)."""
    return wait * (1 + JITTER)


def _refusal(state: BudgetState, limits: Limits, now: float, ask: Ask) -> Grant | None:
    """Why ``ask`` cannot take a turn now, or None when it can."""
    if state.holder is not None and state.lease_until > now:
        # The next turn cannot come before the request in flight is answered, plus the spacing.
        wait = max(min(limits.min_interval, state.lease_until - now), _MIN_WAIT)
        return Grant(False, wait, "in_flight")
    start, reason = earliest_start(state, limits, now)
    if start > now:
        return Grant(False, start - now, reason)
    if ask.keep_spare > 0 and any(waiting.urgent for waiting in state.queued):
        return Grant(False, max(limits.min_interval, _MIN_WAIT), "queued")
    if ask.peek:
        return Grant(False, 0.0, "free")
    if ask.keep_spare > 0 and spare_after_one(state, limits, now) - demand(state) < ask.keep_spare:
        return Grant(False, 0.0, "tight")
    return None


def _trim(sent: tuple[float, ...], limits: Limits, now: float) -> tuple[float, ...]:
    """The request times that still matter: those in the window, and the last one (for spacing)."""
    ordered = tuple(sorted(sent))
    recent = tuple(t for t in ordered if t > now - limits.window) if limits.per_window > 0 else ()
    return recent if recent else ordered[-1:]


def extend(state: BudgetState, now: float, holder: str, lease_seconds: float) -> BudgetState:
    """Renew the lease of ``holder`` (its request is still in flight); nothing if it holds none.

    :param state: the token's state.
    :param now: the store's clock.
    :param holder: the id the turn was taken with.
    :param lease_seconds: how long from now.
    """
    if state.holder != holder:
        return state
    return replace(state, lease_until=max(state.lease_until, now + lease_seconds))


def release(state: BudgetState, now: float, holder: str, limits: Limits) -> BudgetState:
    """The request of ``holder`` has been answered (or abandoned): free the lease and count from the
    answer. An answer after the lease lapsed is counted too, as one more request.

    :param state: the token's state.
    :param now: the store's clock when the answer arrived.
    :param holder: the id the turn was taken with.
    :param limits: the limits in force (for what the window keeps).
    """
    if state.holder != holder:
        # The lease lapsed (and someone else may hold the token now): leave their turn alone, but
        # count this request, which the service has seen, for spacing and the window.
        return replace(state, sent=_trim((*state.sent, now), limits, now))
    sent = (*state.sent[:-1], max(state.sent[-1], now)) if state.sent else (now,)
    return replace(state, sent=_trim(sent, limits, now), holder=None, lease_until=0.0)


def hold_off(state: BudgetState, until: float) -> BudgetState:
    """Allow no request with the token before ``until`` (after a 1018).

    :param state: the token's state.
    :param until: a time on the store's clock.
    """
    return replace(state, not_before=max(state.not_before, until))


def token_key(token: str) -> str:
    """A stable, non-secret key for a token's shared state (the token alone decides it).

    :param token: the Flex token.
    """
    return hashlib.sha256(token.encode()).hexdigest()[:16]


__all__ = [
    "DECLARATION_TTL",
    "JITTER",
    "Ask",
    "BudgetState",
    "Grant",
    "Limits",
    "Waiting",
    "declare",
    "demand",
    "earliest_start",
    "extend",
    "forgotten",
    "hold_off",
    "release",
    "spare_after_one",
    "token_key",
    "try_acquire",
    "younger_than",
]
