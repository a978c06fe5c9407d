"""Unit tests of the pure protocol core: no network, no Airflow."""

from __future__ import annotations

import contextlib
import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ibflex import protocol as p
from airflow_provider_ibflex.protocol import Action, BodyKind, FlexInputError, FlexParseError

CURRENT = p.endpoints_for(None)

# The reference text's own samples, verbatim.
V2_OK = b"""<FlexStatementResponse timestamp="28 August, 2012 11:26 AM EDT">
<code>5372466165 </code>
<url>https://www.interactivebrokers.com/Universal/servlet/FlexStatementService.GetStatement</url>
</FlexStatementResponse>"""
V2_FAIL = b"""<FlexStatementResponse timestamp="28 August, 2012 11:26 AM EDT">
<code>Invalid request or unable to validate request.</code>
<url>https://www.interactivebrokers.com/Universal/servlet/FlexStatementService.GetStatement</url>
</FlexStatementResponse>"""
V2_GET_FAIL = b"""<FlexStatementResponse timestamp="28 August, 2012 11:26 AM EDT">
<code>Invalid request or unable to validate request.</code>
</FlexStatementResponse>"""
V3_OK = b"""<FlexStatementResponse timestamp="28 August, 2012 10:37 AM EDT">
<Status>Success</Status>
<ReferenceCode>1234567890 </ReferenceCode>
<URL>https://www.interactivebrokers.com/Universal/servlet/FlexStatementService.GetStatement</URL>
</FlexStatementResponse>"""
V3_FAIL = b"""<FlexStatementResponse timestamp="28 August, 2012 10:37 AM EDT">
<Status>Fail</Status>
<ErrorCode>1012</ErrorCode>
<ErrorMessage>Token has expired.</ErrorMessage>
</FlexStatementResponse>"""
V3_GET_FAIL = b"""<FlexStatementResponse timestamp="28 August, 2012 10:37 AM EDT">
<Status>Fail</Status>
<ErrorCode>1015</ErrorCode>
<ErrorMessage>Token is invalid.</ErrorMessage>
</FlexStatementResponse>"""


def v3_error(code: int, status: str = "Fail") -> bytes:
    message = p.ERROR_TABLE[code].message if code in p.ERROR_TABLE else "Something new."
    return (
        f"<FlexStatementResponse><Status>{status}</Status><ErrorCode>{code}</ErrorCode>"
        f"<ErrorMessage>{message}</ErrorMessage></FlexStatementResponse>"
    ).encode()


class TestEnvelopes:
    def test_v2_success_strips_whitespace(self) -> None:
        env = p.parse_envelope(V2_OK)
        assert (env.version, env.reference_code, env.is_error) == (2, "5372466165", False)
        assert env.url and env.url.endswith("FlexStatementService.GetStatement")

    @pytest.mark.parametrize("body", [V2_FAIL, V2_GET_FAIL])
    def test_v2_error_text_maps_back_to_its_code(self, body: bytes) -> None:
        env = p.parse_envelope(body)
        assert env.error_code == 1020 and env.reference_code is None

    def test_v3_success_with_uppercase_url_element(self) -> None:
        env = p.parse_envelope(V3_OK)
        assert (env.version, env.status, env.reference_code) == (3, "Success", "1234567890")
        assert env.url and env.url.startswith("https://www.interactivebrokers.com/")

    @pytest.mark.parametrize(("body", "code"), [(V3_FAIL, 1012), (V3_GET_FAIL, 1015)])
    def test_v3_failures(self, body: bytes, code: int) -> None:
        env = p.parse_envelope(body)
        assert env.error_code == code and env.status == "Fail"

    def test_v2_1018_new_wording_still_maps(self) -> None:
        body = (
            b"<FlexStatementResponse><code>Too many requests have been made from this token. Please try "
            b"again shortly. Limited to one request per second, 10 requests per minute (per token).</code>"
            b"</FlexStatementResponse>"
        )
        assert p.parse_envelope(body).error_code == 1018

    def test_unknown_v2_text_is_fatal_unknown(self) -> None:
        env = p.parse_envelope(b"<FlexStatementResponse><code>Nope</code></FlexStatementResponse>")
        assert env.error_code == 0
        assert p.outcome_of_error(env).kind == "fatal"

    @pytest.mark.parametrize(
        "body",
        [
            b"<FlexStatementResponse><Status>Fail</Status></FlexStatementResponse>",
            b"<FlexStatementResponse></FlexStatementResponse>",
            b"<FlexQueryResponse/>",
            b"<FlexStatementResponse><Status>Success</Status><ReferenceCode>abc</ReferenceCode>"
            b"</FlexStatementResponse>",
            b"not xml at all",
            b"<FlexStatementResponse><code>1</code>",
        ],
    )
    def test_malformed_envelopes_raise_parse_error(self, body: bytes) -> None:
        with pytest.raises(FlexParseError):
            p.parse_envelope(body)

    def test_oversized_envelope_refused(self) -> None:
        body = (
            b"<FlexStatementResponse><code>1</code>"
            + b" " * p.MAX_ENVELOPE_BYTES
            + b"</FlexStatementResponse>"
        )
        with pytest.raises(FlexParseError, match="limit"):
            p.parse_envelope(body)

    def test_external_entity_refused(self, tmp_path: object) -> None:
        body = (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
            b"<FlexStatementResponse><code>&x;</code></FlexStatementResponse>"
        )
        assert p.classify_body(body) is BodyKind.ENVELOPE, "a DTD does not make an envelope an HTML page"
        with pytest.raises(FlexParseError, match="declares a DTD"):
            p.parse_envelope(body)

    def test_billion_laughs_refused(self) -> None:
        entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(10))
        body = f"<!DOCTYPE r [{entities}]><FlexStatementResponse><code>&l9;</code></FlexStatementResponse>"
        assert p.classify_body(body.encode()) is BodyKind.ENVELOPE
        with pytest.raises(FlexParseError, match="declares a DTD"):
            p.parse_envelope(body.encode())


class TestErrorTable:
    REFERENCE_CODES = [1001, *range(1003, 1022)]

    def test_table_covers_reference_text_and_1025_without_1002(self) -> None:
        assert set(p.ERROR_TABLE) == {*self.REFERENCE_CODES, 1025}

    @pytest.mark.parametrize("code", [*REFERENCE_CODES, 1025])
    @pytest.mark.parametrize("status", ["Fail", "Warn"])
    def test_every_code_classified_on_errorcode_not_status(self, code: int, status: str) -> None:
        outcome = p.outcome_of_get_statement(p.parse_envelope(v3_error(code, status)))
        expected = {Action.POLL: "pending", Action.THROTTLED: "throttled", Action.RETRY: "retry"}
        assert outcome.kind == expected.get(p.ERROR_TABLE[code].action, "fatal")
        assert outcome.code == code and str(code) in outcome.message

    @pytest.mark.parametrize("code", [*REFERENCE_CODES, 1025])
    def test_every_code_round_trips_through_v2_text(self, code: int) -> None:
        body = f"<FlexStatementResponse><code>{p.ERROR_TABLE[code].message}</code></FlexStatementResponse>"
        assert p.parse_envelope(body.encode()).error_code == code

    def test_actions(self) -> None:
        assert p.ERROR_TABLE[1019].action is Action.POLL
        assert p.ERROR_TABLE[1018].action is Action.THROTTLED
        assert {c for c, i in p.ERROR_TABLE.items() if i.action is Action.RETRY} == {
            1001,
            1004,
            1005,
            1006,
            1007,
            1008,
            1009,
            1021,
        }
        fatal = {c for c, i in p.ERROR_TABLE.items() if i.action is Action.FATAL}
        assert fatal == {1003, 1010, 1011, 1012, 1013, 1014, 1015, 1016, 1017, 1020, 1025}

    @pytest.mark.parametrize(
        ("code", "words"),
        [
            (1012, "new token"),
            (1013, "IP"),
            (1014, "query id"),
            (1015, "newest"),
            (1020, "few minutes"),
            (1025, "lock"),
        ],
    )
    def test_fatal_hints_say_what_to_do(self, code: int, words: str) -> None:
        assert words in p.ERROR_TABLE[code].hint

    def test_unknown_code_is_fatal(self) -> None:
        outcome = p.outcome_of_get_statement(p.parse_envelope(v3_error(1999)))
        assert outcome.kind == "fatal" and outcome.code == 1999

    def test_send_request_success_and_url_vetting(self) -> None:
        out = p.outcome_of_send_request(p.parse_envelope(V3_OK), CURRENT)
        assert out.kind == "reference" and out.reference_code == "1234567890"
        assert (
            out.url
            == "https://www.interactivebrokers.com/Universal/servlet/FlexStatementService.GetStatement"
        )


class TestEndpoints:
    def test_default_and_base(self) -> None:
        assert CURRENT.send_request == p.DEFAULT_BASE_URL + "/SendRequest"
        assert CURRENT.get_statement == p.DEFAULT_BASE_URL + "/GetStatement"
        assert p.endpoints_for(p.DEFAULT_BASE_URL + "/") == CURRENT

    def test_legacy_send_request_url(self) -> None:
        legacy = "https://www.interactivebrokers.com/Universal/servlet/FlexStatementService.SendRequest"
        ends = p.endpoints_for(legacy)
        assert ends.send_request == legacy
        assert ends.get_statement.endswith("FlexStatementService.GetStatement")

    @pytest.mark.parametrize("bad", ["ftp://x/y", "https://", "https://h/p?t=1"])
    def test_bad_hosts(self, bad: str) -> None:
        with pytest.raises(FlexInputError, match="host"):
            p.endpoints_for(bad)

    @pytest.mark.parametrize(
        ("url", "trusted"),
        [
            ("https://gdcdyn.interactivebrokers.com/AccountManagement/FlexWebService/GetStatement", True),
            ("https://interactivebrokers.com/x", True),
            ("https://ndcdyn.interactivebrokers.com.evil.example/GetStatement", False),
            ("https://evilinteractivebrokers.com/GetStatement", False),
            ("http://gdcdyn.interactivebrokers.com/GetStatement", False),
            ("https://user:pw@gdcdyn.interactivebrokers.com/GetStatement", False),
            ("https://127.0.0.2:8443/GetStatement", False),
            ("javascript:alert(1)", False),
            ("", False),
            (None, False),
        ],
    )
    def test_trusted_statement_url(self, url: str | None, trusted: bool) -> None:
        chosen = p.trusted_statement_url(url, CURRENT)
        assert chosen == (url if trusted else CURRENT.get_statement)

    def test_configured_host_is_trusted(self) -> None:
        ends = p.endpoints_for("https://flex.example.org/AccountManagement/FlexWebService")
        url = "https://flex.example.org/other/GetStatement"
        assert p.trusted_statement_url(url, ends) == url


class TestParameters:
    def test_send_request_params(self) -> None:
        params = p.send_request_params("TOK", " 123 ", 3, "20260101", datetime.date(2026, 3, 1))
        assert params == {"t": "TOK", "q": "123", "v": "3", "fd": "20260101", "td": "20260301"}

    def test_get_statement_params(self) -> None:
        assert p.get_statement_params("TOK", 42, 2) == {"t": "TOK", "q": "42", "v": "2"}

    @pytest.mark.parametrize("bad", ["", None, "abc", "12a", "\uff11\uff12", "-1"])
    def test_bad_query_ids(self, bad: object) -> None:
        with pytest.raises(FlexInputError, match="query_id"):
            p.send_request_params("T", bad)

    @pytest.mark.parametrize("bad", ["", None, "x", "1.5"])
    def test_bad_reference_codes(self, bad: object) -> None:
        with pytest.raises(FlexInputError, match="reference_code"):
            p.get_statement_params("T", bad)

    @pytest.mark.parametrize("bad", [1, 4, "three", None])
    def test_bad_versions(self, bad: object) -> None:
        with pytest.raises(FlexInputError, match="version"):
            p.validate_version(bad)

    @pytest.mark.parametrize(
        ("fd", "td", "match"),
        [
            ("20260301", "20260101", "after"),
            ("20250101", "20260102", "365"),
            ("20260101", None, "together"),
            ("2026-13-01", "20260101", "from_date"),
        ],
    )
    def test_date_validation(self, fd: object, td: object, match: str) -> None:
        with pytest.raises(FlexInputError, match=match):
            p.send_request_params("T", "1", 3, fd, td)

    def test_exactly_365_days_allowed_and_datetimes_accepted(self) -> None:
        start = datetime.datetime(2025, 1, 1, 12, 0)
        assert p.date_range(start, "2026-01-01") == (datetime.date(2025, 1, 1), datetime.date(2026, 1, 1))


class TestClassify:
    @pytest.mark.parametrize(
        ("head", "kind"),
        [
            (V3_OK, BodyKind.ENVELOPE),
            (
                b'\xef\xbb\xbf  \r\n<?xml version="1.0" encoding="UTF-8"?>\n<FlexStatementResponse>',
                BodyKind.ENVELOPE,
            ),
            (b"<FlexQueryResponse queryName='x'>", BodyKind.XML_STATEMENT),
            (b'<?xml version="1.0"?><!-- c --><FlexQueryResponse>', BodyKind.XML_STATEMENT),
            (b"<!DOCTYPE html><html>", BodyKind.HTML),
            (b"<HTML><body>404", BodyKind.HTML),
            (b'"ClientAccountID","Symbol"\n"U1","AAPL"\n' * 40, BodyKind.TEXT_STATEMENT),
            (b"ClientAccountID\tSymbol\n" * 40, BodyKind.TEXT_STATEMENT),
            (b"<FlexQueryResponseX>", BodyKind.UNKNOWN),
            (b"<other/>", BodyKind.UNKNOWN),
            (b"\x00\x01\x02binary" * 100, BodyKind.UNKNOWN),
        ],
    )
    def test_kinds(self, head: bytes, kind: BodyKind) -> None:
        assert p.classify_body(head) is kind

    @pytest.mark.parametrize(
        "head", [b"", b"  ", b"<Flex", b"<FlexQueryResponse", b"<?xml version", b"\xef\xbb\xbf", b"<!DOC"]
    )
    def test_need_more_until_decidable(self, head: bytes) -> None:
        assert p.classify_body(head) is BodyKind.NEED_MORE

    def test_complete_bodies(self) -> None:
        assert p.classify_body(b"", complete=True) is BodyKind.EMPTY
        assert p.classify_body(b" \n", complete=True) is BodyKind.EMPTY
        assert p.classify_body(b"<FlexQueryResponse", complete=True) is BodyKind.UNKNOWN
        assert p.classify_body(b"<?xml never ends", complete=True) is BodyKind.UNKNOWN

    def test_a_split_multibyte_character_at_the_sample_end_is_text(self) -> None:
        body = b"a" * (p.TEXT_SNIFF_BYTES - 1) + "é,b".encode()
        assert p.classify_body(body) is BodyKind.TEXT_STATEMENT

    def test_text_waits_for_a_full_sample(self) -> None:
        assert p.classify_body(b"a,b\n") is BodyKind.NEED_MORE
        assert p.classify_body(b"a,b\n", complete=True) is BodyKind.TEXT_STATEMENT

    @given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
    @settings(max_examples=300, deadline=None)
    def test_classification_is_stable_under_chunking(self, body: bytes, step: int) -> None:
        whole = p.classify_body(body, complete=True)
        reader_kind = BodyKind.NEED_MORE
        for end in range(step, len(body) + step, step):
            reader_kind = p.classify_body(body[:end])
            if reader_kind is not BodyKind.NEED_MORE:
                break
        if reader_kind is BodyKind.NEED_MORE:
            reader_kind = p.classify_body(body, complete=True)
        assert reader_kind is whole

    @given(st.binary(max_size=2000))
    @settings(max_examples=300, deadline=None)
    def test_parser_raises_only_its_own_error(self, body: bytes) -> None:
        with contextlib.suppress(FlexParseError):
            p.parse_envelope(body)

    @given(st.text(max_size=300))
    @settings(max_examples=200, deadline=None)
    def test_envelope_prefixed_text_never_crashes(self, text: str) -> None:
        body = b"<FlexStatementResponse>" + text.encode() + b"</FlexStatementResponse>"
        try:
            env = p.parse_envelope(body)
        except FlexParseError:
            return
        assert env.version in (2, 3)


class TestReader:
    def feed_all(self, status: int, body: bytes, call: str = "get", step: int = 7) -> p.ResponseReader:
        reader = p.ResponseReader(status, call, CURRENT)  # type: ignore[arg-type]
        for start in range(0, len(body), step):
            if reader.feed(body[start : start + step]):
                return reader
        reader.end()
        return reader

    def test_statement_decided_from_its_head_only(self) -> None:
        body = b"<FlexQueryResponse>" + b"x" * 10_000
        reader = self.feed_all(200, body)
        assert reader.outcome and reader.outcome.kind == "statement"
        assert len(reader.buffered) < 100 and body.startswith(reader.buffered)

    def test_envelope_buffered_whole(self) -> None:
        reader = self.feed_all(200, v3_error(1019, "Warn"))
        assert reader.outcome and reader.outcome.kind == "pending"

    def test_send_request_reference(self) -> None:
        reader = self.feed_all(200, V2_OK, call="send")
        assert reader.outcome and reader.outcome.reference_code == "5372466165"

    @pytest.mark.parametrize(
        ("status", "body", "kind"),
        [
            (500, b"<html>down</html>", "retry"),
            (200, b"<!DOCTYPE html><html>404</html>", "retry"),
            (404, b"<html>404</html>", "fatal"),
            (200, b"", "retry"),
            (200, b"\x00\xff" * 100, "retry"),
            (200, b"<FlexStatementResponse><code>", "retry"),
        ],
    )
    def test_non_statements(self, status: int, body: bytes, kind: str) -> None:
        reader = self.feed_all(status, body)
        assert reader.outcome and reader.outcome.kind == kind

    def test_oversized_envelope_stops_reading(self) -> None:
        reader = p.ResponseReader(200, "get", CURRENT)
        assert not reader.feed(b"<FlexStatementResponse>")
        assert reader.feed(b" " * (p.MAX_ENVELOPE_BYTES + 1))
        assert reader.outcome and "refused" in reader.outcome.message


class TestDigest:
    def test_complete_xml(self) -> None:
        digest = p.StatementDigest(BodyKind.XML_STATEMENT)
        for part in (b"<FlexQueryResponse>", b"...", b"</FlexQueryResponse>\n\n"):
            digest.update(part)
        digest.check_complete()
        assert digest.size == 44 and digest.format == "xml"

    def test_truncated_xml(self) -> None:
        digest = p.StatementDigest(BodyKind.XML_STATEMENT)
        digest.update(b"<FlexQueryResponse><Trades>")
        with pytest.raises(FlexParseError, match="truncated"):
            digest.check_complete()

    def test_empty_csv(self) -> None:
        with pytest.raises(FlexParseError, match="empty"):
            p.StatementDigest(BodyKind.TEXT_STATEMENT).check_complete()


class TestRedact:
    @pytest.mark.parametrize(
        "text",
        [
            "https://h/SendRequest?t=SECRET123&q=1&v=3",
            "https://h/GetStatement?q=1&T=SECRET123&v=3",
            "GET /x?v=3&t=SECRET123 HTTP/1.1",
            "HTTPSConnectionPool(host='h'): Max retries exceeded with url: /x?t=SECRET123&q=1",
        ],
    )
    def test_token_parameter_redacted(self, text: str) -> None:
        assert "SECRET123" not in p.redact(text)
        assert "***" in p.redact(text)

    def test_token_anywhere_redacted_when_known(self) -> None:
        assert p.redact("token SECRET123 here", "SECRET123") == "token *** here"

    def test_other_parameters_kept(self) -> None:
        assert p.redact("https://h/x?q=5&v=3") == "https://h/x?q=5&v=3"
