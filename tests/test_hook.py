"""The Hook over real HTTP against the simulator, writing real files."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_ibflex.exceptions import IBFlexFatalError, IBFlexTransientError
from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
from airflow_provider_ibflex.protocol import FlexInputError
from airflow_provider_ibflex.simulator import FlexSimulator
from tests.conftest import files_under, new_token, sha256_of

MakeConn = Callable[..., str]


@pytest.fixture
def hook(make_conn: MakeConn, token: str) -> IBFlexHook:
    return IBFlexHook(make_conn(token))


class TestConnection:
    def test_env_var_connection_with_defaults_just_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_IBFLEX_DEFAULT", json.dumps({"conn_type": "ibflex", "password": "abc"})
        )
        hook = IBFlexHook()
        assert hook.settings.endpoints.send_request == (
            "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService/SendRequest"
        )
        assert hook.settings.version == 3
        assert hook.session.headers["User-Agent"].startswith("airflow-provider-ibflex/0.1.0 Python/3.")

    def test_missing_token_names_connection(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_NO_TOKEN", json.dumps({"conn_type": "ibflex"}))
        with pytest.raises(FlexInputError, match="'no_token' has no Flex token"):
            IBFlexHook("no_token")

    @pytest.mark.parametrize(
        ("extra", "match"),
        [
            ({"version": 4}, "version"),
            ({"read_timeout": "soon"}, "read_timeout"),
            ({"connect_timeout": -1}, "connect_timeout"),
        ],
    )
    def test_invalid_extras_name_connection_and_field(
        self, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], match: str
    ) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_BAD_EXTRA", json.dumps({"conn_type": "ibflex", "password": "x", "extra": extra})
        )
        with pytest.raises(FlexInputError, match=f"'bad_extra'.*{match}"):
            IBFlexHook("bad_extra")

    def test_user_agent_override(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
    ) -> None:
        flex_simulator.add_query("1")
        hook = IBFlexHook(make_conn(token, user_agent="my-desk/1.0"))
        hook.send_request("1")
        assert flex_simulator.requests("send")[-1].user_agent == "my-desk/1.0"

    def test_token_is_registered_with_airflows_masker(self, hook: IBFlexHook, token: str) -> None:
        from airflow.sdk.log import redact

        assert token not in str(redact(f"url?t={token}"))


class TestSendRequest:
    def test_success_returns_reference_and_url(self, hook: IBFlexHook, flex_simulator: FlexSimulator) -> None:
        flex_simulator.add_query("555")
        ref = hook.send_request("555")
        assert ref.reference_code.isdigit()
        # The simulator's <Url> is plain http on 127.0.0.1: not trusted, so the configured URL is used.
        assert ref.url == flex_simulator.base_url + "/GetStatement"
        sent = flex_simulator.requests("send")[-1]
        assert (sent.q, sent.version, sent.fd, sent.td) == ("555", "3", None, None)
        assert sent.user_agent.startswith("airflow-provider-ibflex/")

    def test_dates_are_sent_as_fd_td(self, hook: IBFlexHook, flex_simulator: FlexSimulator) -> None:
        flex_simulator.add_query("555")
        hook.send_request("555", from_date="2026-01-01", to_date="20260131")
        sent = flex_simulator.requests("send")[-1]
        assert (sent.fd, sent.td) == ("20260101", "20260131")

    def test_bad_dates_fail_before_any_request(self, hook: IBFlexHook, flex_simulator: FlexSimulator) -> None:
        with pytest.raises(FlexInputError, match="after"):
            hook.send_request("555", from_date="20260201", to_date="20260101")
        assert flex_simulator.requests() == []

    @pytest.mark.parametrize("version", [2, 3])
    def test_unknown_query_is_fatal_with_hint(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator, version: int
    ) -> None:
        hook = IBFlexHook(make_conn(token, version=version))
        with pytest.raises(IBFlexFatalError) as info:
            hook.send_request("999")
        assert isinstance(info.value, AirflowFailException)
        assert info.value.code == 1014 and "query id" in str(info.value)
        assert len(flex_simulator.requests("send")) == 1, "a fatal code must not be retried"

    @pytest.mark.parametrize(("state", "code"), [("expired", 1012), ("invalid", 1015), ("inactive", 1011)])
    def test_token_states(
        self, make_conn: MakeConn, flex_simulator: FlexSimulator, state: str, code: int
    ) -> None:
        token = flex_simulator.add_token(new_token(), state=state)
        flex_simulator.add_query("1")
        with pytest.raises(IBFlexFatalError) as info:
            IBFlexHook(make_conn(token)).send_request("1")
        assert info.value.code == code and token not in str(info.value)

    def test_ip_bound_token(self, make_conn: MakeConn, flex_simulator: FlexSimulator) -> None:
        token = flex_simulator.add_token(new_token(), ip="10.9.8.7")
        flex_simulator.add_query("1")
        with pytest.raises(IBFlexFatalError, match=r"1013.*IP"):
            IBFlexHook(make_conn(token)).send_request("1")

    def test_transient_faults_are_retried(self, hook: IBFlexHook, flex_simulator: FlexSimulator) -> None:
        flex_simulator.add_query("1")
        flex_simulator.add_fault("http500", step="send")
        flex_simulator.add_fault("error", step="send", code=1009)
        assert hook.send_request("1").reference_code
        assert [r.answer for r in flex_simulator.requests("send")] == ["fault:http500", "1009", "reference"]

    def test_persistent_transient_failure_is_not_fatal(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator
    ) -> None:
        flex_simulator.add_query("1")
        flex_simulator.add_fault("http500", step="send", times=None)
        with pytest.raises(IBFlexTransientError, match=r"after 3 attempts") as info:
            hook.send_request("1")
        assert not isinstance(info.value, AirflowFailException)

    def test_throttling_waits_at_least_throttle_wait(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
    ) -> None:
        flex_simulator.add_query("1")
        flex_simulator.add_fault("error", step="send", code=1018, times=2)
        hook = IBFlexHook(make_conn(token, throttle_wait=0.3))
        started = time.monotonic()
        assert hook.send_request("1").reference_code
        assert time.monotonic() - started >= 0.6

    def test_throttling_is_not_a_failed_attempt(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
    ) -> None:
        flex_simulator.add_query("1")
        flex_simulator.add_fault("error", step="send", code=1018, times=6)
        hook = IBFlexHook(make_conn(token, throttle_wait=0.01, max_attempts=2))
        assert hook.send_request("1").reference_code
        assert [r.answer for r in flex_simulator.requests()] == ["1018"] * 6 + ["reference"]

    def test_waits_after_1018_carry_jitter(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
    ) -> None:
        flex_simulator.add_query("1")
        flex_simulator.add_fault("error", step="send", code=1018, times=8)
        IBFlexHook(make_conn(token, throttle_wait=0.2)).send_request("1")
        times = [r.at for r in flex_simulator.requests()]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.2 and max(gaps) - min(gaps) > 0.002, gaps

    def test_legacy_servlet_url_as_host(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
    ) -> None:
        flex_simulator.add_query("1")
        hook = IBFlexHook(make_conn(token, host=flex_simulator.legacy_send_url))
        ref = hook.send_request("1")
        assert ref.url.endswith("FlexStatementService.GetStatement")
        assert flex_simulator.requests("send")[-1].path.endswith("FlexStatementService.SendRequest")

    def test_hang_is_cut_by_read_timeout(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator
    ) -> None:
        flex_simulator.add_query("1")
        flex_simulator.add_fault("hang", step="send", seconds=30)
        hook = IBFlexHook(make_conn(token, read_timeout=0.3))
        started = time.monotonic()
        assert hook.send_request("1").reference_code
        assert time.monotonic() - started < 5

    def test_connection_refused_is_transient_and_redacted(
        self, make_conn: MakeConn, token: str, no_token_leak: Callable[..., None]
    ) -> None:
        hook = IBFlexHook(make_conn(token, host="http://127.0.0.1:9/AccountManagement/FlexWebService"))
        with pytest.raises(IBFlexTransientError) as info:
            hook.send_request("1")
        assert "t=***" in str(info.value)
        no_token_leak(token, info.value, str(info.value))


class TestDownload:
    def test_poll_until_ready_then_land(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        flex_simulator.add_query("7", generation_polls=2, size=50_000)
        ref = hook.send_request("7")
        dest = f"file://{out_dir}/a/b/statement.xml"
        states = [hook.download_statement(ref.reference_code, dest, url=ref.url).state for _ in range(2)]
        assert states == ["pending", "pending"]
        assert files_under(out_dir) == []
        result = hook.download_statement(ref.reference_code, dest, url=ref.url)
        assert result.landed and result.metadata
        landed = out_dir / "a/b/statement.xml"
        served = flex_simulator.requests("get")[-1]
        assert result.metadata == {
            "uri": dest,
            "size": landed.stat().st_size,
            "sha256": sha256_of(landed),
            "format": "xml",
            "reference_code": ref.reference_code,
        }
        assert (served.size, served.sha256) == (landed.stat().st_size, sha256_of(landed))
        assert files_under(out_dir) == ["a/b/statement.xml"]

    def test_csv_statement(self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path) -> None:
        flex_simulator.add_query("8", format="csv", size=30_000)
        ref = hook.send_request("8")
        result = hook.download_statement(ref.reference_code, str(out_dir / "s.csv"))
        assert result.metadata and result.metadata["format"] == "csv"
        assert (out_dir / "s.csv").read_bytes().startswith(b'"ClientAccountID"')
        assert result.metadata["sha256"] == flex_simulator.statement("8").sha256()

    def test_large_statement_streams(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        flex_simulator.add_query("9", size=60_000_000)
        ref = hook.send_request("9")
        result = hook.download_statement(ref.reference_code, str(out_dir / "big.xml"))
        assert result.metadata and result.metadata["size"] == flex_simulator.statement("9").size
        assert result.metadata["sha256"] == flex_simulator.requests("get")[-1].sha256

    def test_v2_download(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        flex_simulator.add_query("1", generation_polls=1)
        hook = IBFlexHook(make_conn(token, version=2))
        ref = hook.send_request("1")
        assert hook.download_statement(ref.reference_code, str(out_dir / "x.xml")).state == "pending"
        assert hook.download_statement(ref.reference_code, str(out_dir / "x.xml")).landed

    def test_always_truncated_fails_transiently_and_leaves_nothing(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        flex_simulator.add_query("1")
        ref = hook.send_request("1")
        flex_simulator.add_fault("truncated", times=None)
        with pytest.raises(IBFlexTransientError, match="truncated"):
            hook.download_statement(ref.reference_code, str(out_dir / "s.xml"))
        assert files_under(out_dir) == []

    @pytest.mark.parametrize("kind", ["http500", "html404", "empty", "garbage", "oversized"])
    def test_non_statement_bodies_are_never_stored(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path, kind: str
    ) -> None:
        flex_simulator.add_query("1")
        ref = hook.send_request("1")
        flex_simulator.add_fault(kind, times=None)
        with pytest.raises(IBFlexTransientError):
            hook.download_statement(ref.reference_code, str(out_dir / "s.xml"))
        assert files_under(out_dir) == []
        assert len(flex_simulator.requests("get")) == 3

    def test_html_404_with_status_404_is_fatal(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        flex_simulator.add_query("1")
        ref = hook.send_request("1")
        flex_simulator.add_fault("html404", http_status=404)
        with pytest.raises(IBFlexFatalError, match="host"):
            hook.download_statement(ref.reference_code, str(out_dir / "s.xml"))

    def test_expired_reference_code_is_fatal(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        with pytest.raises(IBFlexFatalError) as info:
            hook.download_statement("123", str(out_dir / "s.xml"))
        assert info.value.code == 1017 and "SendRequest again" in str(info.value)
        assert len(flex_simulator.requests("get")) == 1

    def test_trickle_within_read_timeout_lands(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        flex_simulator.add_query("1", size=3_000)
        ref = hook.send_request("1")
        flex_simulator.add_fault("trickle", seconds=0.01)
        assert hook.download_statement(ref.reference_code, str(out_dir / "s.xml")).landed

    @pytest.mark.parametrize(
        ("destination", "match"),
        [("nosuchscheme://bucket/x.xml", "scheme"), ("file:///tmp/folder/", "folder"), ("", "destination")],
    )
    def test_bad_destination_fails_before_any_request(
        self, hook: IBFlexHook, flex_simulator: FlexSimulator, destination: str, match: str
    ) -> None:
        with pytest.raises(FlexInputError, match=match):
            hook.download_statement("123", destination)
        assert flex_simulator.requests() == []


class TestPacingAgainstRealLimits:
    def test_default_pacing_never_draws_1018(
        self, make_conn: MakeConn, token: str, flex_simulator: FlexSimulator, out_dir: Path
    ) -> None:
        flex_simulator.config.rate_limit = (1.0, 10)
        flex_simulator.add_query("1", generation_polls=3)
        hook = IBFlexHook(make_conn(token, min_interval=1.0, max_requests_per_minute=10))
        started = time.monotonic()
        ref = hook.send_request("1")
        while not hook.download_statement(ref.reference_code, str(out_dir / "s.xml")).landed:
            pass
        answers = [r.answer for r in flex_simulator.requests()]
        assert "1018" not in answers and answers[-1] == "statement"
        assert time.monotonic() - started >= 3.0


class TestTestConnection:
    def test_valid_token(self, hook: IBFlexHook, flex_simulator: FlexSimulator) -> None:
        ok, message = hook.test_connection()
        assert ok and "1017" in message
        assert len(flex_simulator.requests()) == 1

    @pytest.mark.parametrize(("state", "code"), [("expired", "1012"), ("invalid", "1015")])
    def test_bad_tokens(
        self, make_conn: MakeConn, flex_simulator: FlexSimulator, state: str, code: str
    ) -> None:
        token = flex_simulator.add_token(new_token(), state=state)
        ok, message = IBFlexHook(make_conn(token)).test_connection()
        assert not ok and code in message and token not in message

    def test_unreachable(self, make_conn: MakeConn, token: str) -> None:
        ok, message = IBFlexHook(make_conn(token, host="http://127.0.0.1:9/x")).test_connection()
        assert not ok and token not in message


def test_no_token_in_any_log_exception_or_value(
    make_conn: MakeConn, flex_simulator: FlexSimulator, out_dir: Path, no_token_leak: Callable[..., None]
) -> None:
    token = flex_simulator.add_token(new_token())
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    flex_simulator.add_query("1", generation_polls=1)
    hook = IBFlexHook(make_conn(token))
    ref = hook.send_request("1")
    pending = hook.download_statement(ref.reference_code, str(out_dir / "s.xml"))
    landed = hook.download_statement(ref.reference_code, str(out_dir / "s.xml"))
    flex_simulator.add_fault("http500", times=None)
    with pytest.raises(IBFlexTransientError) as transient:
        hook.download_statement(ref.reference_code, str(out_dir / "t.xml"))
    flex_simulator.add_fault("error", code=1015, step="send")
    with pytest.raises(IBFlexFatalError) as fatal:
        hook.send_request("1")
    no_token_leak(
        token, ref, pending, landed, transient.value, fatal.value, hook.settings, hook.test_connection()
    )
    assert flex_simulator.requests()[0].token == token, "the check must be able to see the token"
