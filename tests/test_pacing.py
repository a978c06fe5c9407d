"""The token's request budget: the pure arithmetic, the shared stores across real processes, and the
Hook in several processes against the rate-limited simulator."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ibflex.pacing import BudgetBusy, BudgetTight, TokenBudget
from airflow_provider_ibflex.pacing.budget import (
    Ask,
    BudgetState,
    Limits,
    Waiting,
    hold_off,
    release,
    token_key,
    try_acquire,
)
from airflow_provider_ibflex.pacing.stores import (
    FileBudgetStore,
    RedisBudgetStore,
    SqlBudgetStore,
    store_from_config,
)
from airflow_provider_ibflex.settings import settings_from_connection
from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig
from tests.conftest import new_token

LIMITS = Limits(min_interval=1.0, per_window=10, window=60.0, lease_seconds=75.0)


def run_sequence(limits: Limits, latencies: list[float], start: float = 0.0) -> list[tuple[float, float]]:
    """One client taking turns as soon as allowed; each answered after its latency: (grant, answer)."""
    state, now, turns = BudgetState(), start, []
    for index, latency in enumerate(latencies):
        ask = Ask(f"h{index}")
        while True:
            state, grant = try_acquire(state, limits, now, ask)
            if grant.granted:
                break
            assert grant.wait > 0, grant
            now += grant.wait
        turns.append((now, now + latency))
        now += latency
        state = release(state, now, ask.holder, limits)
    return turns


def assert_within_limits(turns: list[tuple[float, float]], limits: Limits) -> None:
    """No overlap, ``min_interval`` from each answer to the next grant, ``per_window`` per window."""
    turns = sorted(turns)
    for (_, answered), (granted, _) in itertools.pairwise(turns):
        assert granted - answered >= limits.min_interval - 1e-6, (answered, granted)
    if limits.per_window:
        for index in range(limits.per_window, len(turns)):
            assert turns[index][0] - turns[index - limits.per_window][1] >= limits.window - 1e-6


class TestBudgetArithmetic:
    def test_one_per_second_then_the_window(self) -> None:
        turns = run_sequence(LIMITS, [0.0] * 12)
        assert [granted for granted, _ in turns] == [*map(float, range(10)), 60.0, 61.0]

    def test_spacing_counts_from_the_answer(self) -> None:
        turns = run_sequence(LIMITS, [0.7, 0.0])
        assert turns[1][0] == pytest.approx(1.7)

    def test_one_request_in_flight(self) -> None:
        state, first = try_acquire(BudgetState(), LIMITS, 0.0, Ask("a"))
        assert first.granted
        state, second = try_acquire(state, LIMITS, 5.0, Ask("b"))
        assert not second.granted and second.reason == "in_flight" and second.wait == 1.0
        # A lease its holder stopped renewing belongs to a dead process: it lapses.
        state, third = try_acquire(state, LIMITS, 80.0, Ask("b"))
        assert third.granted
        late = release(state, 81.0, "a", LIMITS)
        assert (late.holder, late.lease_until) == ("b", state.lease_until), "b's turn stays b's"
        assert late.sent == (*state.sent, 81.0), "the late answer still counts"

    def test_hold_off_after_1018(self) -> None:
        state = hold_off(BudgetState(), 100.0)
        _, grant = try_acquire(state, LIMITS, 40.0, Ask("a"))
        assert not grant.granted and grant.reason == "hold_off" and grant.wait == 60.0
        assert hold_off(state, 50.0).not_before == 100.0, "a shorter hold-off never shortens one in force"

    def test_keep_spare_and_peek_take_nothing(self) -> None:
        state = BudgetState(sent=tuple(float(t) for t in range(8)))
        _, grant = try_acquire(state, LIMITS, 10.0, Ask("a", keep_spare=1))
        assert grant.granted, "one more leaves one spare"
        state = BudgetState(sent=tuple(float(t) for t in range(9)))
        after, grant = try_acquire(state, LIMITS, 10.0, Ask("a", keep_spare=1))
        assert not grant.granted and grant.reason == "tight"
        assert (after.sent, after.holder, after.queued) == (state.sent, None, ())
        after, grant = try_acquire(BudgetState(), LIMITS, 10.0, Ask("a", peek=True))
        assert not grant.granted and grant.reason == "free" and (after.sent, after.holder) == ((), None)

    def test_polls_let_waiting_sendrequests_go_first(self) -> None:
        state, _ = try_acquire(BudgetState(), LIMITS, 0.0, Ask("first"))
        state = release(state, 0.0, "first", LIMITS)
        state, send = try_acquire(state, LIMITS, 0.5, Ask("send", urgent=True))
        assert not send.granted and [(w.holder, w.urgent) for w in state.queued] == [("send", True)]
        state, poll = try_acquire(state, LIMITS, 1.0, Ask("poll", keep_spare=1))
        assert not poll.granted and poll.reason == "queued"
        state, download = try_acquire(state, LIMITS, 1.0, Ask("download"))
        assert download.granted, "a download does not yield: its statement is ready"
        state = release(state, 1.0, "download", LIMITS)
        state, send = try_acquire(state, LIMITS, 2.0, Ask("send", urgent=True))
        assert send.granted and [w.holder for w in state.queued] == ["poll"]
        # A place in the queue lapses once its caller has stopped asking (its process has gone).
        state, _ = try_acquire(BudgetState(sent=(0.0,)), LIMITS, 0.5, Ask("gone", urgent=True))
        state, poll = try_acquire(state, LIMITS, 10.0, Ask("poll", keep_spare=1))
        assert poll.granted

    def test_a_poll_leaves_a_turn_for_every_waiting_caller(self) -> None:
        used = tuple(float(t) for t in range(5))  # 5 of 10 used: 4 to spare after one more
        waiting = tuple(Waiting(f"w{n}", 100.0) for n in range(4))
        _, grant = try_acquire(
            BudgetState(sent=used, queued=waiting[:3]), LIMITS, 6.0, Ask("p", keep_spare=1)
        )
        assert grant.granted, "3 waiting: one turn is left for the poll's download"
        _, grant = try_acquire(BudgetState(sent=used, queued=waiting), LIMITS, 6.0, Ask("p", keep_spare=1))
        assert not grant.granted and grant.reason == "tight"
        _, grant = try_acquire(BudgetState(sent=used, queued=waiting), LIMITS, 6.0, Ask("download"))
        assert grant.granted, "only polls keep turns to spare"

    def test_unlimited_window_keeps_only_the_last_request(self) -> None:
        limits = Limits(min_interval=0.0, per_window=0)
        turns = run_sequence(limits, [0.0] * 50)
        assert turns[-1][0] == 0.0
        state, _ = try_acquire(BudgetState(), limits, 0.0, Ask("a"))
        assert len(state.sent) == 1

    def test_state_round_trips_through_json_and_survives_garbage(self) -> None:
        state = BudgetState((1.5, 2.5), 9.0, "h", 80.0, (Waiting("s", 12.0, True, 3),))
        state = BudgetState(
            *(state.sent, state.not_before, state.holder, state.lease_until, state.queued),
            declared=((Limits(2.0, 5, 60.0), 900.0),),
            created=1.0,
            accounted=0.5,
        )
        assert BudgetState.from_json(state.to_json()) == state
        legacy = '{"sent": [1.5], "queued": [["s", 12.0, true]]}'  # written before weights
        assert BudgetState.from_json(legacy).queued == (Waiting("s", 12.0, True, 1),)
        for junk in (None, "", b"{not json", "[1, 2]", '{"sent": "x"}'):
            assert BudgetState.from_json(junk) == BudgetState()

    def test_token_key_is_the_token_alone_and_hides_it(self) -> None:
        assert token_key("SECRET") == token_key("SECRET") != token_key("SECRET2")
        key = token_key("123456789012345678901234")
        assert len(key) == 16 and set(key) <= set("0123456789abcdef"), "16 hex digits, not the token"

    @given(
        st.lists(st.tuples(st.integers(0, 3), st.floats(0, 3), st.floats(0, 2)), min_size=1, max_size=60),
        st.sampled_from([Limits(1.0, 10, 60.0, 75.0), Limits(0.5, 3, 5.0, 10.0), Limits(0.0, 2, 1.0, 5.0)]),
    )
    @settings(max_examples=200, deadline=None)
    def test_interleaved_clients_never_exceed_the_limits(
        self, script: list[tuple[int, float, float]], limits: Limits
    ) -> None:
        """Four clients ask at random moments and hold their turns for random latencies."""
        state, now = BudgetState(), 0.0
        holding: dict[int, tuple[str, float, float]] = {}  # client -> (holder, granted, answer due)
        turns: list[tuple[float, float]] = []
        for number, (client, pause, latency) in enumerate(script):
            now += pause
            for who, (holder, granted, due) in sorted(holding.items(), key=lambda kv: kv[1][2]):
                if due <= now:
                    state = release(state, due, holder, limits)
                    turns.append((granted, due))
                    del holding[who]
            if client in holding:
                continue
            state, grant = try_acquire(state, limits, now, Ask(f"c{client}-{number}"))
            if grant.granted:
                holding[client] = (f"c{client}-{number}", now, now + min(latency, limits.lease_seconds / 2))
        for _holder, granted, due in holding.values():
            turns.append((granted, due))
        assert_within_limits(turns, limits)


# --------------------------------------------------------------------------------------------------
# Stores shared by real processes
# --------------------------------------------------------------------------------------------------

STORE_WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    from airflow_provider_ibflex.pacing import TokenBudget
    from airflow_provider_ibflex.settings import settings_from_connection

    token, turns, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    extra = {"min_interval": 0.05, "max_requests_per_minute": 4, "rate_window": 0.6}
    budget = TokenBudget(settings_from_connection("x", token, None, extra))
    time.sleep(max(start_at - time.time(), 0))  # every worker starts in the same instant
    for _ in range(turns):
        with budget.turn():
            granted = time.time()
            time.sleep(random.uniform(0, 0.02))
            answered = time.time()
        print(json.dumps([granted, answered]), flush=True)
    """
)
STORE_LIMITS = Limits(min_interval=0.05, per_window=4, window=0.6)


@pytest.fixture(params=["file", "redis", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment that points a process at one store, as ``[ibflex]`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__IBFLEX__")}
    if request.param == "file":
        env["AIRFLOW__IBFLEX__RATE_LIMIT_FOLDER"] = str(tmp_path / "budgets")
    else:
        url = request.getfixturevalue(f"{request.param}_url").replace("+psycopg2", "")
        env["AIRFLOW_CONN_BUDGET_STORE"] = url
        env["AIRFLOW__IBFLEX__RATE_LIMIT_CONN_ID"] = "budget_store"
    yield env


def run_store_workers(envs: list[dict[str, str]], turns: int) -> list[tuple[float, float]]:
    token, start_at = new_token(), str(time.time() + 6)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", STORE_WORKER, token, str(turns), start_at],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    result = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        result += [tuple(json.loads(line)) for line in out.splitlines()]
    assert len(result) == turns * len(envs)
    return result


def test_processes_sharing_a_store_take_turns_within_the_limits(store_env: dict[str, str]) -> None:
    turns = run_store_workers([store_env] * 4, 4)
    assert_within_limits(turns, STORE_LIMITS)
    # 16 turns at 4 per 0.6 s window cannot take less than three windows.
    assert max(t[0] for t in turns) - min(t[0] for t in turns) >= 3 * STORE_LIMITS.window - 0.1


def test_processes_without_a_shared_store_would_collide(tmp_path: Path) -> None:
    """The same workers, each with a folder of its own, overlap: the check above can fail."""
    envs = [
        {**os.environ, "AIRFLOW__IBFLEX__RATE_LIMIT_FOLDER": str(tmp_path / f"own-{i}")} for i in range(4)
    ]
    turns = run_store_workers(envs, 4)
    with pytest.raises(AssertionError):
        assert_within_limits(turns, STORE_LIMITS)


def test_stores_come_from_the_connection_and_refuse_other_types(redis_url: str, postgres_url: str) -> None:
    from airflow.sdk import Connection

    redis_conn = Connection.from_json(
        json.dumps(
            {
                "conn_type": "redis",
                "host": "127.0.0.1",
                "port": int(redis_url.rsplit(":", 1)[1].split("/")[0]),
            }
        ),
        conn_id="r",
    )
    store = store_from_config("r", "", lambda _: redis_conn)
    assert isinstance(store, RedisBudgetStore)
    assert store.update("k" + new_token(), lambda state, now: (state, now)) > 1e9  # Redis's clock
    other = Connection(conn_id="my", conn_type="mysql")
    with pytest.raises(ValueError, match="must be a 'redis' or 'postgres' connection"):
        store_from_config("my", "", lambda _: other)
    assert isinstance(store_from_config("", "/tmp/x", lambda _: other), FileBudgetStore)
    pg = Connection.from_json(json.dumps({"conn_type": "postgres", **_parts(postgres_url)}), conn_id="pg")
    sql = store_from_config("pg", "", lambda _: pg)
    assert isinstance(sql, SqlBudgetStore)
    assert sql.update("k" + new_token(), lambda state, now: (state, now)) > 1e9  # PostgreSQL's clock
    assert "ibflex_token_budget" in repr(sql) and "@" in repr(sql)


def _parts(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return {"host": parsed.host, "port": parsed.port, "login": parsed.username, "schema": parsed.database}


def test_budget_busy_and_tight_take_nothing(tmp_path: Path) -> None:
    import asyncio

    spaced = TokenBudget(
        settings_from_connection("x", new_token(), None, {"min_interval": 30}), FileBudgetStore(tmp_path)
    )
    with spaced.turn():
        pass
    with pytest.raises(BudgetBusy, match="spacing"), spaced.turn(max_wait=1):
        pytest.fail("no turn within a second of the last one")

    fresh = TokenBudget(settings_from_connection("x", new_token(), None, {}), FileBudgetStore(tmp_path))

    async def peek() -> None:
        async with fresh.aturn(peek=True):
            pytest.fail("a peek takes nothing")

    with pytest.raises(BudgetTight):
        asyncio.run(peek())
    assert fresh.ask(Ask("z")).granted, "the peek left the turn free"


# --------------------------------------------------------------------------------------------------
# The Hook in several processes against the rate-limited simulator
# --------------------------------------------------------------------------------------------------

HOOK_WORKER = textwrap.dedent(
    """
    import sys
    from airflow_provider_ibflex.hooks.ibflex import IBFlexHook

    hook = IBFlexHook("paced")
    for query_id in sys.argv[1:]:
        hook.send_request(query_id)
    """
)
SCALE = 10.0  # compressed time: 0.1 s between requests, 10 per 6 s


def paced_env(base: dict[str, str], simulator: FlexSimulator, token: str, **extra: Any) -> dict[str, str]:
    connection = {
        "conn_type": "ibflex",
        "password": token,
        "host": simulator.base_url,
        "extra": {
            "min_interval": 1.0 / SCALE,
            "rate_window": 60.0 / SCALE,
            "throttle_wait": 60.0 / SCALE,
            "max_attempts": 2,
            **extra,
        },
    }
    return {**base, "AIRFLOW_CONN_PACED": json.dumps(connection)}


def request_times(simulator: FlexSimulator) -> list[float]:
    return sorted(record.at for record in simulator.requests())


def test_four_processes_on_one_token_draw_no_1018(store_env: dict[str, str]) -> None:
    with FlexSimulator(SimulatorConfig(rate_limit=(1.0, 10), time_scale=SCALE)) as simulator:
        token = simulator.add_token(new_token())
        for query_id in ("1", "2", "3"):
            simulator.add_query(query_id)
        env = paced_env(store_env, simulator, token)
        workers = [
            subprocess.Popen([sys.executable, "-c", HOOK_WORKER, "1", "2", "3"], env=env) for _ in range(4)
        ]
        assert [worker.wait(timeout=120) for worker in workers] == [0] * 4
        answers = [record.answer for record in simulator.requests()]
        times = request_times(simulator)
    assert answers == ["reference"] * 12, answers
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.95 / SCALE
    assert all(times[i + 10] - times[i] >= 60.0 / SCALE * 0.95 for i in range(len(times) - 10))


def test_a_1018_holds_off_every_process(store_env: dict[str, str]) -> None:
    """A token busy elsewhere: the 1018 one process draws makes all of them wait, none fails."""
    with FlexSimulator(SimulatorConfig(rate_limit=None)) as simulator:
        token = simulator.add_token(new_token())
        simulator.add_query("1")
        simulator.add_fault("error", step="send", code=1018, times=3)
        env = paced_env(store_env, simulator, token, throttle_wait=1.0, max_attempts=1)
        workers = [subprocess.Popen([sys.executable, "-c", HOOK_WORKER, "1"], env=env) for _ in range(3)]
        assert [worker.wait(timeout=120) for worker in workers] == [0] * 3, "a busy token fails no task"
        records = sorted(simulator.requests(), key=lambda r: r.at)
    answers = [record.answer for record in records]
    assert answers.count("1018") == 3 and answers.count("reference") == 3
    # Every request after a 1018 waits out its hold-off, whichever process makes it.
    for before, after in itertools.pairwise(records):
        if before.answer == "1018":
            assert after.at - before.at >= 1.0, answers
