"""A token's request budget as pure arithmetic over a small JSON-safe state, with the clock supplied.

The service allows each token one request per second and ten in any minute, across every process that
uses it. The state lives in a shared store (``pacing.stores``); every process changes it with these
functions inside one atomic transaction of that store, on the store's clock. Nothing here sleeps,
locks or reads a clock, so the arithmetic is tested on its own and shared by every transport.

Three rules keep requests apart however the network delays them:

- a *lease*: one request per token in flight at a time, across all processes;
- *spacing from the answer*: the next request may start ``min_interval`` after the previous one was
  answered (the service has certainly seen it by then), and the window counts answers too;
- a *hold-off*: after a 1018 no process sends with the token before the hold-off ends.

Callers that wait for a turn say so in the state (a place in the queue, which lapses if they stop
asking). Polls, which ask to keep spare turns, count them as demand: a poll takes a turn only if the
window still has one for every waiting caller and one more (for its own download, should the poll
find the statement ready). And polls let a waiting SendRequest go first: it starts a statement's
generation, while a poll made in the meantime would mostly find statements not ready yet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Literal

# Never ask a store again sooner than this: with no spacing configured, a busy token is not a spin.
_MIN_WAIT = 0.02
GrantReason = Literal["granted", "free", "hold_off", "in_flight", "spacing", "window", "queued", "tight"]
# How far a caller may stretch a wait at random (as a fraction of it), so that callers told to wait
# for the same moment (the end of a hold-off above all) do not all ask again in the same instant.
JITTER = 0.1
# How long a waiting caller's place in the queue outlives its expected wait (then it lapses: its
# process has gone).
_QUEUE_GRACE = 2.0


@dataclass(frozen=True)
class Limits:
    """The budget of one token.

    :param min_interval: seconds from one request's answer to the next request.
    :param per_window: requests allowed in any ``window`` seconds (0: no limit).
    :param window: the length of the "minute" (60 s; shorter only to compress time in benchmarks).
    :param lease_seconds: how long a request may stay in flight before its lease lapses (a process that
        died mid-request must not block the token for ever).
    """

    min_interval: float = 1.0
    per_window: int = 10
    window: float = 60.0
    lease_seconds: float = 75.0


@dataclass(frozen=True)
class BudgetState:
    """What the store keeps for one token.

    :param sent: times of the latest requests (answer times once answered), oldest first, at most
        ``per_window`` of them (one if the window is unlimited).
    :param not_before: no request before this time (a 1018 hold-off).
    :param holder: who holds the lease of the request in flight, if any.
    :param lease_until: when that lease lapses.
    :param queued: callers waiting for a turn, as ``(holder, lapses at, urgent)``.
    """

    sent: tuple[float, ...] = ()
    not_before: float = 0.0
    holder: str | None = None
    lease_until: float = 0.0
    queued: tuple[tuple[str, float, bool], ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "sent": list(self.sent),
                "not_before": self.not_before,
                "holder": self.holder,
                "lease_until": self.lease_until,
                "queued": [list(entry) for entry in self.queued],
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
                tuple(
                    (str(holder), float(until), bool(urgent))
                    for holder, until, urgent in data.get("queued", ())
                ),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


@dataclass(frozen=True)
class Grant:
    """The answer to one request for a turn.

    :param granted: True when the caller holds the lease now and may send.
    :param wait: seconds until asking again is worthwhile (0 when granted or free).
    :param reason: ``granted``; ``free`` (a peek found a turn available, nothing taken); why not
        (``hold_off``, ``in_flight``, ``spacing``, ``window``); or ``tight`` (a turn is free but
        taking it would leave fewer spare requests in the window than asked for).
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
    """

    holder: str
    keep_spare: int = 0
    peek: bool = False
    urgent: bool = False


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


def try_acquire(state: BudgetState, limits: Limits, now: float, ask: Ask) -> tuple[BudgetState, Grant]:
    """Take the token's next turn if it is free now, else say how long to wait.

    :param state: the token's state.
    :param limits: the token's limits.
    :param now: the store's clock.
    :param ask: who asks, and on what terms.
    """
    others = tuple(entry for entry in state.queued if entry[1] > now and entry[0] != ask.holder)
    state = replace(state, queued=others)
    grant = _refusal(state, limits, now, ask)
    if grant is not None:
        if grant.wait > 0:
            place = (ask.holder, now + later_than(grant.wait) + _QUEUE_GRACE, ask.urgent)
            state = replace(state, queued=(*others, place))
        return state, grant
    keep = max(limits.per_window, 1)
    sent = (*state.sent, now)[-keep:]
    return replace(state, sent=sent, holder=ask.holder, lease_until=now + limits.lease_seconds), Grant(True)


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
    if ask.keep_spare > 0 and any(urgent for _, _, urgent in state.queued):
        return Grant(False, max(limits.min_interval, _MIN_WAIT), "queued")
    if ask.peek:
        return Grant(False, 0.0, "free")
    if ask.keep_spare > 0 and spare_after_one(state, limits, now) - len(state.queued) < ask.keep_spare:
        return Grant(False, 0.0, "tight")
    return None


def release(state: BudgetState, now: float, holder: str) -> BudgetState:
    """The request of ``holder`` has been answered: free the lease and count from the answer.

    :param state: the token's state.
    :param now: the store's clock when the answer arrived.
    :param holder: the id the turn was taken with.
    """
    if state.holder != holder:
        return state  # the lease lapsed and someone else holds the token now: leave their turn alone
    sent = (*state.sent[:-1], max(state.sent[-1], now)) if state.sent else state.sent
    return replace(state, sent=sent, holder=None, lease_until=0.0)


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
    "JITTER",
    "Ask",
    "BudgetState",
    "Grant",
    "Limits",
    "earliest_start",
    "hold_off",
    "release",
    "spare_after_one",
    "token_key",
    "try_acquire",
]
