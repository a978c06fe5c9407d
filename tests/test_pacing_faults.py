"""The token's budget under faults: a request never outlives its lease, every wait counts against the
deadline, a cancelled or killed wait gives its turn back, a store outage or restart is waited out
without a burst, connections that disagree follow the strictest limits, and a turn handed to a worker
is reserved for it. Real stores (files, redis-server, PostgreSQL), real processes, the simulator over
HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ibflex.pacing import (
    BudgetBusy,
    BudgetStoreUnavailable,
    BudgetTight,
    TokenBudget,
)
from airflow_provider_ibflex.pacing.budget import (
    Ask,
    BudgetState,
    Limits,
    Waiting,
    forgotten,
    try_acquire,
    younger_than,
)
from airflow_provider_ibflex.pacing.stores import (
    FileBudgetStore,
    RedisBudgetStore,
    redis_client_from_connection,
)
from airflow_provider_ibflex.settings import load_settings, settings_from_connection
from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig
from airflow_provider_ibflex.triggers.ibflex import (
    MAX_IN_FLIGHT,
    IBFlexStatementTrigger,
    _loop_resources,
    poll_statement,
)
from tests.conftest import first_event, new_token
from tests.services import running_redis

REPO = Path(__file__).resolve().parents[1]
MakeConn = Callable[..., str]


def state_of(budget: TokenBudget) -> BudgetState:
    """The token's state as the store keeps it."""
    return budget.store.update(budget.key, lambda state, now: (state, state))


class SlowStore(FileBudgetStore):
    """The real file store whose every change takes ``delay`` more seconds to come back, as a store
    at the end of a slow link does: the change is made, the caller has not heard yet."""

    delay = 0.0

    def update(self, key: str, change: Any) -> Any:
        result = super().update(key, change)
        time.sleep(self.delay)
        return result


def fast_settings(token: str, **extra: Any) -> Any:
    return settings_from_connection(
        "x", token, None, {"min_interval": 0, "max_requests_per_minute": 0, **extra}
    )


# -- the pure arithmetic of the new rules ----------------------------------------------------------------


LIMITS = Limits(min_interval=1.0, per_window=10, window=60.0, lease_seconds=20.0)


def test_connections_that_disagree_follow_the_strictest_limits() -> None:
    strict, loose = Limits(3.0, 5, 60.0), Limits(0.3, 30, 60.0)
    state, grant = try_acquire(BudgetState(), strict, 0.0, Ask("a"))
    state = replace(state, holder=None)
    # The loose connection asks 0.5 s later: the strict spacing, declared by the other, applies.
    state, grant = try_acquire(state, loose, 0.5, Ask("b"))
    assert not grant.granted and grant.reason == "spacing" and grant.wait == pytest.approx(2.5)
    # Five in the window for everyone, even for the one that declared thirty.
    state = replace(state, sent=tuple(float(t) for t in range(0, 15, 3)), holder=None)
    _, grant = try_acquire(state, loose, 16.0, Ask("b"))
    assert not grant.granted and grant.reason == "window"
    # A declaration nobody renews lapses: then the loose limits are the strictest left.
    _, grant = try_acquire(state, loose, 16.0 + 900.0, Ask("b"))
    assert grant.granted


def test_a_store_that_started_within_the_window_is_taken_as_full() -> None:
    fresh = BudgetState()
    state, grant = try_acquire(fresh, LIMITS, 1000.0, Ask("a"), store_started=990.0)
    assert not grant.granted and grant.reason == "window" and grant.wait == pytest.approx(50.0)
    # Once made up for, the same start changes nothing more; a start longer ago than the window,
    # nothing at all.
    assert forgotten(state, LIMITS, 1001.0, 990.0) == state
    _, grant = try_acquire(BudgetState(), LIMITS, 1000.0, Ask("a"), store_started=900.0)
    assert grant.granted


def test_a_state_younger_than_this_processs_last_request_is_taken_as_full() -> None:
    # This process sent at 100; the store's state was created at 110 (flushed, failed over).
    state = BudgetState(created=110.0)
    after = younger_than(state, LIMITS, 120.0, last_use=100.0)
    assert len(after.sent) == 10 and set(after.sent) == {110.0}
    assert younger_than(after, LIMITS, 121.0, last_use=100.0) == after, "made up for once"
    assert younger_than(state, LIMITS, 120.0, last_use=None) == state, "never used here: nothing forgotten"
    assert younger_than(state, LIMITS, 200.0, last_use=100.0) == state, "the request left the window"


def test_local_demand_and_reservations_count_for_polls() -> None:
    used = tuple(float(t) for t in range(5))  # 5 of 10: 4 to spare after one more
    state = BudgetState(sent=used, queued=(Waiting("trigger", 100.0, weight=4),))
    _, grant = try_acquire(state, LIMITS, 6.0, Ask("poll", keep_spare=1))
    assert not grant.granted and grant.reason == "tight", "a trigger with three queued behind it is four"
    # A free turn handed on is reserved under the asker's id ...
    state, grant = try_acquire(BudgetState(sent=used), LIMITS, 6.0, Ask("handoff", peek=True, reserve=30.0))
    assert grant.reason == "free" and [(w.holder, w.until) for w in state.queued] == [("handoff", 36.0)]
    # ... counted by the next poll, until the worker takes it with that id.
    state = replace(state, queued=(*state.queued, *(Waiting(f"w{n}", 100.0) for n in range(3))))
    _, grant = try_acquire(state, LIMITS, 7.0, Ask("poll", keep_spare=1))
    assert grant.reason == "tight"
    state, grant = try_acquire(state, LIMITS, 7.0, Ask("handoff"))
    assert grant.granted and "handoff" not in [w.holder for w in state.queued]


# -- a request cannot outlive its lease -----------------------------------------------------------------


def test_a_trigger_takes_the_turn_only_once_its_request_can_be_sent(
    tmp_path: Path, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    """Every place for requests in the loop is busy: the trigger waits for one without holding the
    token, and a worker meanwhile gets its turn at once."""
    flex_simulator.add_query("1", generation_polls=100)
    code = flex_simulator.state.issue_reference(token, "1")
    settings = load_settings(make_conn(token))
    store = FileBudgetStore(tmp_path)
    trigger_budget, worker_budget = TokenBudget(settings, store), TokenBudget(settings, store)

    async def scenario() -> str:
        gate = _loop_resources().gate
        for _ in range(MAX_IN_FLIGHT):
            await gate.acquire()
        polling = asyncio.ensure_future(poll_statement(settings, trigger_budget, code, max_wait=30))
        await asyncio.sleep(0.5)
        assert state_of(worker_budget).holder is None, "no lease without a place to send the request"
        assert worker_budget.ask(Ask("worker")).granted
        worker_budget.give_back("worker")
        for _ in range(MAX_IN_FLIGHT):
            gate.release()
        return (await polling).kind

    assert asyncio.run(scenario()) == "pending"


def test_a_turn_held_longer_than_its_lease_is_renewed(tmp_path: Path) -> None:
    store = FileBudgetStore(tmp_path)
    settings = fast_settings(new_token())
    holder, other = TokenBudget(settings, store), TokenBudget(settings, store)
    holder.limits = replace(holder.limits, lease_seconds=0.6)
    with holder.turn():
        time.sleep(2.0)  # three leases long
        grant = other.ask(Ask("other"))
        assert not grant.granted and grant.reason == "in_flight", "the lease lapsed under a live request"
    assert other.ask(Ask("other")).granted


def test_a_head_that_never_finishes_is_cut_at_one_deadline(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    """Each byte comes before any read times out; the whole head still has one deadline."""
    flex_simulator.add_query("1", generation_polls=100)
    code = flex_simulator.state.issue_reference(token, "1")
    flex_simulator.add_fault("drip", step="get", seconds=0.5)
    settings = load_settings(make_conn(token, connect_timeout=1, read_timeout=2))
    budget = TokenBudget(settings)
    started = time.monotonic()
    outcome = asyncio.run(poll_statement(settings, budget, code, max_wait=30))
    assert outcome.kind == "retry" and "no answer within 3 s" in outcome.message
    assert time.monotonic() - started < 6
    assert state_of(budget).holder is None, "the abandoned request's turn was given back"


def test_the_deadline_covers_this_loops_queue_for_the_token(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
) -> None:
    flex_simulator.add_query("1", generation_polls=100)
    code = flex_simulator.state.issue_reference(token, "1")
    flex_simulator.add_fault("hang", step="get", seconds=4)
    settings = load_settings(make_conn(token, connect_timeout=1, read_timeout=6))
    budget = TokenBudget(settings)

    async def scenario() -> float:
        first = asyncio.ensure_future(poll_statement(settings, budget, code, max_wait=30))
        await asyncio.sleep(0.3)  # the first holds the loop's queue for the token, its request hanging
        started = time.monotonic()
        with pytest.raises(BudgetBusy):
            await poll_statement(settings, budget, code, max_wait=0.5)
        waited = time.monotonic() - started
        await first
        return waited

    assert asyncio.run(scenario()) < 1.5


# -- cancellation and kills give the turn back -------------------------------------------------------------


def test_a_wait_cancelled_while_the_store_answers_gives_the_turn_back(tmp_path: Path) -> None:
    store = SlowStore(tmp_path)
    budget = TokenBudget(fast_settings(new_token()), store)

    async def scenario() -> None:
        async def wait() -> None:
            async with budget.aturn():
                await asyncio.sleep(30)

        store.delay = 0.5
        task = asyncio.ensure_future(wait())
        await asyncio.sleep(0.2)  # the store has granted the turn; the trigger has not heard yet
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.5)  # the store's answer arrives, to nobody

    asyncio.run(scenario())
    store.delay = 0.0
    assert state_of(budget).holder is None, "a cancelled wait stranded the token"


def test_a_request_cancelled_in_flight_gives_the_turn_back_at_once(tmp_path: Path) -> None:
    budget = TokenBudget(fast_settings(new_token()), FileBudgetStore(tmp_path))

    async def scenario() -> None:
        async def wait() -> None:
            async with budget.aturn():
                await asyncio.sleep(30)

        task = asyncio.ensure_future(wait())
        await asyncio.sleep(0.3)
        assert state_of(budget).holder is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert state_of(budget).holder is None


KILLED_WORKER = textwrap.dedent(
    """
    import signal, sys, time
    from airflow_provider_ibflex.operators.ibflex import IBFlexSendRequestOperator

    operator = IBFlexSendRequestOperator(task_id="send", query_id="1", ibflex_conn_id="hanging")
    # What Airflow's task runner does on SIGTERM: the operator's on_kill.
    signal.signal(signal.SIGTERM, lambda *_: operator.on_kill())
    print("ready", flush=True)
    operator.execute({"ti": None})
    """
)


def test_a_sigtermed_worker_gives_its_turn_back(tmp_path: Path, flex_simulator: FlexSimulator) -> None:
    token = flex_simulator.add_token(new_token())
    flex_simulator.add_query("1")
    flex_simulator.add_fault("hang", step="send", seconds=30)
    env = {
        **os.environ,
        "AIRFLOW__IBFLEX__RATE_LIMIT_FOLDER": str(tmp_path),
        "AIRFLOW_CONN_HANGING": flex_simulator.connection_uri_json(token, read_timeout=60, min_interval=0),
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    budget = TokenBudget(fast_settings(token), FileBudgetStore(tmp_path))
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while not flex_simulator.requests("send") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert state_of(budget).holder is not None, "the worker's request is in flight"
        worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while state_of(budget).holder is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state_of(budget).holder is None, "the SIGTERMed worker kept the token"
    finally:
        worker.kill()
        worker.wait(timeout=30)


# -- a store in trouble ---------------------------------------------------------------------------------


def redis_budget(url: str, token: str, **extra: Any) -> TokenBudget:
    from airflow.sdk import Connection

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    conn = Connection(conn_id="r", conn_type="redis", host="127.0.0.1", port=port)
    client = redis_client_from_connection(conn)
    client.connection_pool.connection_kwargs.update(socket_timeout=2, socket_connect_timeout=2)
    return TokenBudget(fast_settings(token, **extra), RedisBudgetStore(client))


def test_a_store_outage_is_waited_out_and_nothing_is_sent_meanwhile(caplog: pytest.LogCaptureFixture) -> None:
    with running_redis() as redis:
        budget = redis_budget(redis.url, new_token())
        with budget.turn():
            pass
        redis.stop()
        restart = threading.Timer(7.0, redis.start)  # longer than redis-py's own retries
        restart.start()
        started = time.monotonic()
        with budget.turn():
            granted = time.monotonic()
        restart.join()
    assert granted - started >= 6.5, "a turn was given while the store was down"
    messages = [r.getMessage() for r in caplog.records if "budget store is unreachable" in r.getMessage()]
    assert messages and "RedisBudgetStore" in messages[0] and "ConnectionError" in messages[0]
    assert "default file store" in messages[0] or "rate_limit" in messages[0]


def test_a_store_down_past_the_deadline_is_an_error_event_not_a_trigger_failure(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_ibflex import pacing

    flex_simulator.add_query("1", generation_polls=100)
    code = flex_simulator.state.issue_reference(token, "1")
    with running_redis() as redis:
        budget = redis_budget(redis.url, token)
        redis.stop()
        monkeypatch.setattr(pacing, "_STORE", budget.store)  # what [ibflex] rate_limit_conn_id would give
        monkeypatch.setattr(pacing, "_STORE_SOURCE", "[ibflex] rate_limit_conn_id = 'budget'")
        trigger = IBFlexStatementTrigger(code, time.time() + 4, make_conn(token), poke_interval=0.1)
        event = asyncio.run(first_event(trigger))
    assert event["status"] == "error" and event["store"] is True
    assert "unreachable" in event["message"] and "rate_limit_conn_id = 'budget'" in event["message"]
    assert flex_simulator.requests() == [], "nothing is sent without a turn"
    with pytest.raises(BudgetStoreUnavailable), budget.turn(max_wait=1):
        pytest.fail("no turn from a store that is down")


def test_a_restarted_store_that_forgot_the_window_lets_no_burst_through() -> None:
    """A token that just used its whole window; Redis restarts without persistence: the next request
    still waits for the window to pass."""
    window = 3.0
    with running_redis() as redis:
        token = new_token()
        budget = redis_budget(redis.url, token, max_requests_per_minute=4, rate_window=window)
        for _ in range(4):
            with budget.turn():
                pass
        redis.stop()
        redis.start()
        restarted = time.monotonic()
        fresh_process = redis_budget(redis.url, token, max_requests_per_minute=4, rate_window=window)
        with fresh_process.turn():
            waited = time.monotonic() - restarted
    assert waited >= window * 0.9, f"{waited:.2f} s after the restart"


# -- connections that disagree, on the real service's limits ------------------------------------------------


SCALE = 10.0
LANDING_WORKER = textwrap.dedent(
    """
    import sys
    from airflow_provider_ibflex.hooks.ibflex import IBFlexHook

    conn_id, folder, *queries = sys.argv[1:]
    hook = IBFlexHook(conn_id)
    for query_id in queries:
        reference = hook.send_request(query_id)
        while not hook.download_statement(reference.reference_code, f"{folder}/{query_id}.xml").landed:
            pass
    """
)


def test_two_connections_with_different_limits_on_one_token_draw_no_1018(
    tmp_path: Path, redis_url: str
) -> None:
    """One connection with the default limits, one at 0.3 s and 30 per minute, five queries each,
    against the service's real limits (time compressed x10)."""
    from benchmarks.distributed import ideal_schedule

    with FlexSimulator(SimulatorConfig(rate_limit=(1.0, 10), time_scale=SCALE)) as simulator:
        token = simulator.add_token(new_token())
        for number in range(10):
            simulator.add_query(str(number + 1))

        def connection(min_interval: float, per_minute: int) -> str:
            extra = {"min_interval": min_interval / SCALE, "max_requests_per_minute": per_minute}
            extra |= {"rate_window": 60.0 / SCALE, "throttle_wait": 60.0 / SCALE}
            return simulator.connection_uri_json(token, **extra)

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__IBFLEX__")},
            "AIRFLOW_CONN_BUDGET": redis_url,
            "AIRFLOW__IBFLEX__RATE_LIMIT_CONN_ID": "budget",
            "AIRFLOW_CONN_DEFAULT_LIMITS": connection(1.0, 10),
            "AIRFLOW_CONN_LOOSE_LIMITS": connection(0.3, 30),
        }
        started = time.monotonic()
        plan = {"default_limits": ["1", "2", "3", "4", "5"], "loose_limits": ["6", "7", "8", "9", "10"]}
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", LANDING_WORKER, conn_id, str(tmp_path), *queries], env=env, cwd=REPO
            )
            for conn_id, queries in plan.items()
        ]
        assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
        wall = time.monotonic() - started
        records = sorted(simulator.requests(), key=lambda r: r.at)
    answers = [r.answer for r in records]
    assert "1018" not in answers and answers.count("statement") == 10, answers
    times = [r.at for r in records]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.95 / SCALE
    assert all(times[i + 10] - times[i] >= 60.0 / SCALE * 0.95 for i in range(len(times) - 10))
    ideal = ideal_schedule(10, 0.0, Limits(1.0 / SCALE, 10, 60.0 / SCALE))
    assert wall <= 2 * ideal + 6, f"{wall:.1f} s against an ideal {ideal:.1f} s (plus start-up)"


def test_a_handed_over_turn_is_used_by_the_worker_with_its_reservation(
    make_conn: MakeConn, token: str, flex_simulator: FlexSimulator, tmp_path: Path
) -> None:
    from airflow_provider_ibflex.hooks.ibflex import IBFlexHook

    flex_simulator.add_query("1")
    code = flex_simulator.state.issue_reference(token, "1")
    conn_id = make_conn(token)
    trigger = IBFlexStatementTrigger(code, time.time() + 30, conn_id, handoff=True, poke_interval=1)
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "poll" and event["reservation"]
    budget = TokenBudget(load_settings(conn_id))
    assert [w.holder for w in state_of(budget).queued] == [event["reservation"]]
    # A poll elsewhere counts the reservation; the worker's download consumes it.
    result = IBFlexHook(conn_id).download_statement(
        code, f"file://{tmp_path}/s.xml", reservation=event["reservation"]
    )
    assert result.landed and state_of(budget).queued == ()


def test_budget_tight_still_means_take_nothing(tmp_path: Path) -> None:
    budget = TokenBudget(fast_settings(new_token()), FileBudgetStore(tmp_path))

    async def peek() -> None:
        async with budget.aturn(peek=True):
            pytest.fail("a peek takes nothing")

    with pytest.raises(BudgetTight):
        asyncio.run(peek())
    assert json.loads(state_of(budget).to_json())["holder"] is None
