"""The Flex Web Service simulator's behaviour: an ASGI app over a thread-safe state.

It answers like the service: both endpoint paths (current and legacy), versions 2 and 3, every answer
``text/plain;charset=UTF-8``; tokens that are valid, expired, invalid, inactive or bound to an IP;
queries mapped to statements generated as a stream; generation time by seconds or by polls; the
per-token rate limit; and scripted faults at either step. Every request is logged for tests.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import html
import itertools
import json
import os
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

# The error texts are data the simulator shares with the client; every decision is its own.
from airflow_provider_ibflex.protocol import ERROR_TABLE
from airflow_provider_ibflex.simulator.statements import GeneratedStatement, StatementShape

# The service's rules, as the simulator enforces them.
MAX_DATE_SPAN_DAYS = 365
OVERSIZED_ENVELOPE_BYTES = 1024 * 1024 + 1024

CURRENT_PREFIX = "/AccountManagement/FlexWebService/"
LEGACY_PREFIX = "/Universal/servlet/FlexStatementService."
CONTENT_TYPE = b"text/plain;charset=UTF-8"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FaultKind = Literal[
    "error",  # an error envelope with ``code`` (Status ``status``)
    "http500",  # the "temporarily unavailable" HTML page, HTTP 500
    "html404",  # an HTML 404 page (with ``http_status``, 200 by default)
    "empty",  # HTTP 200 with no body
    "garbage",  # HTTP 200 with bytes that are neither XML nor CSV
    "hang",  # accept, then say nothing for ``seconds``
    "drip",  # a "not ready" envelope one byte every ``seconds``: no single read ever times out
    "trickle",  # the normal answer, a few bytes every ``seconds``
    "reset",  # the statement's first ``after_bytes`` bytes, then the connection is dropped
    "short",  # a body shorter than its Content-Length
    "truncated",  # a whole XML statement without its closing </FlexQueryResponse>
    "foreign_url",  # a successful SendRequest whose <Url> is ``url``
    "xxe",  # an envelope with an external entity pointing at ``url`` (a local file)
    "billion_laughs",  # an envelope with exponential entity expansion
    "oversized",  # an envelope over 1 MiB
    "redirect",  # HTTP 302 to ``url`` with the request's query string (the token included)
]


@dataclass
class TokenSpec:
    """A token the simulator knows.

    :param state: ``valid``, ``expired`` (1012), ``invalid`` (1015) or ``inactive`` (1011).
    :param ip: if set, the only client address allowed (else 1013).
    """

    state: Literal["valid", "expired", "invalid", "inactive"] = "valid"
    ip: str | None = None


@dataclass
class QuerySpec:
    """A Flex Query the simulator can run.

    :param format: ``xml`` or ``csv``.
    :param size: the statement's size in bytes (at most; within one row).
    :param generation_seconds: seconds from SendRequest until the statement is ready.
    :param generation_polls: GetStatement calls answered 1019 before the statement is ready.
    :param pending_status: the HTTP status of those answers: 200, as the service sends them; 404 lets
        a generic HTTP poller (Airflow's ``HttpSensorTrigger``) poll the same statements.
    :param account: the account id in the statement.
    :param name: the query's name.
    :param content: ``basic`` or ``full``; the remaining fields shape a ``full`` statement (see
        ``StatementShape``).
    """

    format: Literal["xml", "csv"] = "xml"
    size: int = 20_000
    generation_seconds: float = 0.0
    generation_polls: int = 0
    pending_status: int = 200
    account: str = "U1234567"
    name: str = "Daily trades"
    content: Literal["basic", "full"] = "basic"
    accounts: int = 1
    date_format: str = "yyyyMMdd"
    time_format: str = "HHmmss"
    date_time_separator: str = ";"
    csv_layout: Literal["plain", "sections", "descriptors"] = "sections"
    extras: bool = True

    def shape(self, truncated: bool = False) -> StatementShape:
        """The shape of the statement this query generates.

        :param truncated: whether it is cut short (a fault).
        """
        return StatementShape(
            self.format,
            self.size,
            self.account,
            self.name,
            truncated,
            self.content,
            self.accounts,
            self.date_format,
            self.time_format,
            self.date_time_separator,
            self.csv_layout,
            self.extras,
        )


@dataclass
class Fault:
    """A scripted fault, applied to matching requests while it has uses left.

    :param kind: what goes wrong (see ``FaultKind``).
    :param step: ``send`` (SendRequest), ``get`` (GetStatement) or ``any``.
    :param times: how many matching requests it applies to; None for all.
    :param code: the error code for ``error``.
    :param status: the v3 Status for ``error``: ``Fail`` or ``Warn``.
    :param seconds: duration for ``hang`` (total), ``trickle`` and ``drip`` (between pieces).
    :param after_bytes: bytes sent before a ``reset``.
    :param http_status: the status of ``html404`` and ``error`` answers.
    :param url: the ``<Url>`` for ``foreign_url``; the entity's target for ``xxe``.
    :param skip: matching requests to let through before the fault starts.
    """

    kind: FaultKind
    step: Literal["send", "get", "any"] = "get"
    times: int | None = 1
    code: int = 1019
    status: Literal["Fail", "Warn"] = "Fail"
    seconds: float = 3600.0
    after_bytes: int = 1000
    http_status: int = 200
    url: str = ""
    skip: int = 0


@dataclass
class RequestRecord:
    """One request as the simulator saw it.

    :param at: wall-clock time it arrived.
    :param path: the URL path.
    :param call: ``send``, ``get`` or ``other``.
    :param token: the token sent (kept raw in memory so tests can check where it went).
    :param q: the query id or reference code.
    :param version: the ``v`` parameter.
    :param answer: what the simulator answered: ``reference``, ``statement``, an error code, ``fault:<kind>``.
    :param fd: the ``fd`` parameter.
    :param td: the ``td`` parameter.
    :param user_agent: the User-Agent header.
    :param client: the client's address.
    :param size: bytes of statement sent in full.
    :param sha256: sha256 of the statement sent in full.
    """

    at: float
    path: str
    call: str
    token: str | None
    q: str | None
    version: str | None
    answer: str = ""
    fd: str | None = None
    td: str | None = None
    user_agent: str = ""
    client: str = ""
    size: int | None = None
    sha256: str | None = None


@dataclass
class SimulatorConfig:
    """Everything the simulator knows; change it between (or during) tests with ``FlexSimulator.configure``.

    :param tokens: token -> spec.
    :param queries: query id -> spec.
    :param rate_limit: ``(min_interval, per_minute)`` per token, as the service enforces; None for none.
    :param time_scale: generation times and rate-limit windows are divided by this (compressed time).
    :param legacy: ``serve`` answers on the legacy servlet paths too; ``retired`` answers them 1001 as
        the real service has since 2026.
    :param url_host: the host put in ``<Url>`` answers (defaults to the simulator's own base URL).
    :param record_digests: compute the sha256 of each statement served (costs CPU on huge ones).
    :param references: reference codes issued in advance: code -> ``[token, query_id]``.
    :param compress: gzip every answer whose request accepts it (as a compressing proxy would); on by
        default when the environment variable ``IBFLEX_SIMULATOR_COMPRESS`` is ``1``.
    """

    tokens: dict[str, TokenSpec] = field(default_factory=dict)
    queries: dict[str, QuerySpec] = field(default_factory=dict)
    rate_limit: tuple[float, int] | None = (1.0, 10)
    time_scale: float = 1.0
    legacy: Literal["serve", "retired"] = "serve"
    url_base: str | None = None
    record_digests: bool = True
    references: dict[str, list[str]] = field(default_factory=dict)
    compress: bool = field(default_factory=lambda: os.environ.get("IBFLEX_SIMULATOR_COMPRESS") == "1")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimulatorConfig:
        """Build a config from its JSON form (the CLI's ``--config`` file).

        :param data: ``{"tokens": {...}, "queries": {...}, "rate_limit": [1, 10] | null, ...}``.
        """
        data = dict(data)
        tokens = {k: TokenSpec(**v) for k, v in data.pop("tokens", {}).items()}
        queries = {str(k): QuerySpec(**v) for k, v in data.pop("queries", {}).items()}
        rate = data.pop("rate_limit", (1.0, 10))
        return cls(tokens, queries, tuple(rate) if rate else None, **data)


@dataclass
class _Reference:
    token: str
    query_id: str
    created: float
    polls: int = 0


def render_envelope(
    version: int,
    *,
    reference_code: str | None = None,
    url: str | None = None,
    code: int | None = None,
    status: str = "Fail",
) -> bytes:
    """Render a ``FlexStatementResponse`` as the service does, for either version.

    :param version: 2 or 3.
    :param reference_code: for a successful SendRequest.
    :param url: the GetStatement URL of a successful SendRequest.
    :param code: the error code of a failure.
    :param status: the v3 Status of a failure (``Fail`` or ``Warn``).
    """
    stamp = time.strftime("%d %B, %Y %I:%M %p EST")
    lines = [f'<FlexStatementResponse timestamp="{stamp}">']
    message = ERROR_TABLE[code].message if code in ERROR_TABLE else f"Unknown error {code}."
    if version == 3:
        if code is None:
            lines += ["<Status>Success</Status>", f"<ReferenceCode>{reference_code}</ReferenceCode>"]
            lines += [f"<Url>{html.escape(url or '')}</Url>"]
        else:
            lines += [f"<Status>{status}</Status>", f"<ErrorCode>{code}</ErrorCode>"]
            lines += [f"<ErrorMessage>{html.escape(message)}</ErrorMessage>"]
    else:
        # The service pads the v2 code with a space, as its own documentation shows.
        lines += [
            f"<code>{reference_code} </code>" if code is None else f"<code>{html.escape(message)}</code>"
        ]
        if url:
            lines += [f"<url>{html.escape(url)}</url>"]
    lines.append("</FlexStatementResponse>")
    return ("\n".join(lines) + "\n").encode()


def token_key(token: str) -> str:
    """The non-secret name the simulator's request log gives a token (a prefix of its sha256)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


_HTML_500 = (
    b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>"
    b"<h1>Our services are temporarily unavailable.</h1><p>Please try again later.</p></body></html>\n"
)
_HTML_404 = b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"


class SimulatorState:
    """The simulator's mutable state, safe to change from a test thread while the server runs.

    :param config: the initial configuration.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.base_url = ""
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self._references: dict[str, _Reference] = {}
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._codes = itertools.count(random.randint(10**9, 5 * 10**9))
        for code, (token, query_id) in config.references.items():
            self._references[str(code)] = _Reference(token, str(query_id), time.monotonic())

    # -- scripting from tests ----------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget faults, references, request log and rate-limit history."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self._references.clear()
            self._calls.clear()

    def records(self, call: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if call is None or r.call == call]

    def issue_reference(self, token: str, query_id: str) -> str:
        """Create a reference code directly, as if SendRequest had been called (for sensor tests).

        :param token: the token it belongs to.
        :param query_id: the query it generates.
        """
        with self._lock:
            return self._new_reference(token, query_id)

    def _new_reference(self, token: str, query_id: str) -> str:
        code = str(next(self._codes))
        self._references[code] = _Reference(token, query_id, time.monotonic())
        return code

    # -- decisions (under the lock, no awaits) ------------------------------------------------------

    def _take_fault(self, call: str) -> Fault | None:
        for fault in self.faults:
            if fault.step not in (call, "any") or fault.times == 0:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                return None
            if fault.times is not None:
                fault.times -= 1
            return fault
        return None

    def _rate_limited(self, token: str, now: float) -> bool:
        if self.config.rate_limit is None:
            return False
        min_interval, per_minute = self.config.rate_limit
        # Compressed time compresses the limits too: 1/s and 10/min become 1/(s/k) and 10/(60 s/k).
        min_interval, window = min_interval / self.config.time_scale, 60.0 / self.config.time_scale
        calls = self._calls.setdefault(token_key(token), deque())
        while calls and now - calls[0] > window:
            calls.popleft()
        too_soon = bool(calls) and now - calls[-1] < min_interval * 0.95
        too_many = per_minute > 0 and len(calls) >= per_minute
        calls.append(now)
        return too_soon or too_many

    def _token_error(self, token: str | None, client: str) -> int | None:
        spec = self.config.tokens.get(token or "")
        if spec is None or spec.state == "invalid":
            return 1015
        if spec.state == "expired":
            return 1012
        if spec.state == "inactive":
            return 1011
        if spec.ip and spec.ip != client:
            return 1013
        return None

    def decide(self, call: str, params: dict[str, str], client: str) -> tuple[str, Any]:
        """What to answer: ``("fault", Fault)``, ``("error", code)``, ``("reference", code)`` or
        ``("statement", GeneratedStatement)``.
        """
        with self._lock:
            fault = self._take_fault(call)
            if fault is not None and fault.kind not in (
                "reset",
                "short",
                "truncated",
                "trickle",
                "foreign_url",
            ):
                return "fault", fault
            token = params.get("t") or params.get("T")
            now = time.monotonic()
            error = self._token_error(token, client)
            if error is None and self._rate_limited(token or "", now):
                return "error", 1018
            if error is not None:
                return "error", error
            assert token is not None
            if call == "send":
                return self._decide_send(token, params, fault)
            return self._decide_get(token, params, fault, now)

    def _decide_send(self, token: str, params: dict[str, str], fault: Fault | None) -> tuple[str, Any]:
        query_id = params.get("q", "")
        if query_id not in self.config.queries:
            return "error", 1014
        if not _valid_period(params.get("fd"), params.get("td")):
            return "error", 1020
        code = self._new_reference(token, query_id)
        if fault is not None and fault.kind == "foreign_url":
            return "reference", (code, fault.url)
        return "reference", (code, None)

    def pending_status(self, reference_code: str | None) -> int:
        """The HTTP status of a "not ready yet" answer for ``reference_code``."""
        reference = self._references.get(reference_code or "")
        return self.config.queries[reference.query_id].pending_status if reference else 200

    def _decide_get(
        self, token: str, params: dict[str, str], fault: Fault | None, now: float
    ) -> tuple[str, Any]:
        reference = self._references.get(params.get("q", ""))
        if reference is None or reference.token != token:
            return "error", 1017
        query = self.config.queries[reference.query_id]
        reference.polls += 1
        waited = (now - reference.created) * self.config.time_scale
        if reference.polls <= query.generation_polls or waited < query.generation_seconds:
            return "error", 1019
        shape = query.shape(truncated=fault is not None and fault.kind == "truncated")
        return "statement", (GeneratedStatement(shape), fault)


class FlexSimulatorApp:
    """The ASGI application.

    :param state: the simulator's state.
    """

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        params = {k: v[-1].strip() for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = (scope.get("client") or ("", 0))[0]
        if path == "/_simulator/requests":
            await self._send_log(send)
            return
        if path == "/_simulator/faults" and scope.get("method") == "POST":
            await self._add_fault(receive, send)
            return
        call, legacy = _route(path)
        record = RequestRecord(
            time.time(),
            path,
            call,
            params.get("t") or params.get("T"),
            params.get("q"),
            params.get("v"),
            fd=params.get("fd"),
            td=params.get("td"),
            user_agent=headers.get("user-agent", ""),
            client=client,
        )
        with self.state._lock:
            self.state.requests.append(record)
        if call == "other":
            record.answer = "html404"
            await _respond(send, 404, _HTML_404)
            return
        version = 3 if params.get("v", "2") == "3" else 2
        if legacy and self.state.config.legacy == "retired":
            record.answer = "1001"
            await _respond(send, 200, render_envelope(version, code=1001))
            return
        decision, detail = self.state.decide(call, params, client)
        short = decision == "statement" and detail[1] is not None and detail[1].kind == "short"
        if self.state.config.compress and "gzip" in headers.get("accept-encoding", "") and not short:
            send = _gzip_sender(send)
        if decision == "fault":
            record.answer = str(detail.code) if detail.kind == "error" else f"fault:{detail.kind}"
            await self._fault(send, detail, version, scope["query_string"].decode("latin-1"))
        elif decision == "error":
            record.answer = str(detail)
            status = "Warn" if detail == 1019 else "Fail"
            http_status = self.state.pending_status(params.get("q")) if detail == 1019 else 200
            await _respond(send, http_status, render_envelope(version, code=detail, status=status))
        elif decision == "reference":
            code, url = detail
            record.answer = "reference" if url is None else "fault:foreign_url"
            url = url or self._get_url(path)
            await _respond(send, 200, render_envelope(version, reference_code=code, url=url))
        else:
            statement, fault = detail
            record.answer = "statement" if fault is None else f"fault:{fault.kind}"
            await self._stream(send, receive, statement, fault, record)

    def _get_url(self, path: str) -> str:
        base = self.state.config.url_base or self.state.base_url
        if path.startswith(LEGACY_PREFIX):
            return base.split("/AccountManagement")[0] + LEGACY_PREFIX + "GetStatement"
        return base + "/GetStatement"

    async def _fault(self, send: Send, fault: Fault, version: int, query: str) -> None:
        if fault.kind == "error":
            status = fault.status
            await _respond(send, fault.http_status, render_envelope(version, code=fault.code, status=status))
        elif fault.kind == "http500":
            await _respond(send, 500, _HTML_500)
        elif fault.kind == "html404":
            await _respond(send, fault.http_status, _HTML_404)
        elif fault.kind == "empty":
            await _respond(send, 200, b"")
        elif fault.kind == "garbage":
            await _respond(send, 200, bytes(range(256)) * 4)
        elif fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            await _respond(send, 200, render_envelope(version, code=1019, status="Warn"))
        elif fault.kind == "drip":
            body = render_envelope(version, code=1019, status="Warn")
            headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for index in range(len(body)):
                more = index < len(body) - 1
                await send({"type": "http.response.body", "body": body[index : index + 1], "more_body": more})
                await asyncio.sleep(fault.seconds)
        elif fault.kind == "xxe":
            target = fault.url or "file:///etc/passwd"
            body = (
                f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "{target}">]>\n'
                "<FlexStatementResponse><Status>Fail</Status><ErrorCode>1019</ErrorCode>"
                "<ErrorMessage>&x;</ErrorMessage></FlexStatementResponse>\n"
            ).encode()
            await _respond(send, 200, body)
        elif fault.kind == "billion_laughs":
            entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">' for i in range(10))
            body = (
                f'<?xml version="1.0"?>\n<!DOCTYPE r [{entities}]>\n'
                "<FlexStatementResponse><Status>Fail</Status><ErrorCode>1019</ErrorCode>"
                "<ErrorMessage>&l9;</ErrorMessage></FlexStatementResponse>\n"
            ).encode()
            await _respond(send, 200, body)
        elif fault.kind == "redirect":
            await send(
                {
                    "type": "http.response.start",
                    "status": 302,
                    "headers": [(b"location", f"{fault.url}?{query}".encode()), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif fault.kind == "oversized":
            filler = b"<!-- " + b"x" * OVERSIZED_ENVELOPE_BYTES + b" -->\n"
            body = render_envelope(version, code=1019, status="Warn").replace(
                b"</FlexStatementResponse>", filler + b"</FlexStatementResponse>"
            )
            await _respond(send, 200, body)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        statement: GeneratedStatement,
        fault: Fault | None,
        record: RequestRecord,
    ) -> None:
        # A client that hangs up (a trigger that read the head, a killed worker) ends the stream:
        # the server's sends to it would otherwise return at once and hold the loop for the rest.
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await self._send_statement(send, gone, statement, fault, record)
        finally:
            watcher.cancel()

    async def _send_statement(
        self,
        send: Send,
        gone: asyncio.Event,
        statement: GeneratedStatement,
        fault: Fault | None,
        record: RequestRecord,
    ) -> None:
        kind = fault.kind if fault else None
        declared = statement.size + (1000 if kind == "short" else 0)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE), (b"content-length", str(declared).encode())],
            }
        )
        digest = hashlib.sha256() if self.state.config.record_digests else None
        sent = 0
        for chunk in statement.chunks():
            if kind == "reset" and fault and sent + len(chunk) >= fault.after_bytes:
                await send(
                    {
                        "type": "http.response.body",
                        "body": chunk[: fault.after_bytes - sent],
                        "more_body": True,
                    }
                )
                raise ConnectionResetError("simulated reset mid-body")
            if kind == "trickle" and fault:
                for start in range(0, len(chunk), 64):
                    await send(
                        {"type": "http.response.body", "body": chunk[start : start + 64], "more_body": True}
                    )
                    await asyncio.sleep(fault.seconds)
            else:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)  # let other connections (and the disconnect) through
            if gone.is_set():
                return
            if digest:
                digest.update(chunk)
            sent += len(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        record.size = sent
        record.sha256 = digest.hexdigest() if digest else None

    async def _add_fault(self, receive: Receive, send: Send) -> None:
        """Script a fault from another process: the body is a ``Fault``'s fields as JSON."""
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.state.add_fault(Fault(**json.loads(body)))
        await _respond(send, 204, b"")

    async def _send_log(self, send: Send) -> None:
        rows = []
        for record in self.state.records():
            row = asdict(record)
            row["token"] = token_key(record.token) if record.token else None
            rows.append(row)
        await _respond(send, 200, json.dumps(rows).encode(), content_type=b"application/json")


def _valid_period(fd: str | None, td: str | None) -> bool:
    """Both or neither of ``fd``/``td``, as yyyymmdd, in order, at most a year apart."""
    if not fd and not td:
        return True
    try:
        start, end = (datetime.datetime.strptime(day or "", "%Y%m%d") for day in (fd, td))
    except ValueError:
        return False
    return start <= end and (end - start).days <= MAX_DATE_SPAN_DAYS


def _route(path: str) -> tuple[str, bool]:
    for prefix, legacy in ((CURRENT_PREFIX, False), (LEGACY_PREFIX, True)):
        if path.startswith(prefix):
            name = path[len(prefix) :].rstrip("/")
            if name == "SendRequest":
                return "send", legacy
            if name == "GetStatement":
                return "get", legacy
    return "other", False


def _gzip_sender(send: Send) -> Send:
    """Wrap an ASGI ``send`` so the answer goes out gzip-encoded, each piece flushed as it comes."""
    compressor = zlib.compressobj(level=1, wbits=31)

    async def gzip_send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
            message = {**message, "headers": [*headers, (b"content-encoding", b"gzip")]}
        elif message["type"] == "http.response.body":
            body = compressor.compress(message.get("body", b""))
            more = message.get("more_body", False)
            body += compressor.flush(zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
            message = {**message, "body": body}
        await send(message)

    return gzip_send


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = CONTENT_TYPE) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = [
    "MAX_DATE_SPAN_DAYS",
    "Fault",
    "FlexSimulatorApp",
    "QuerySpec",
    "RequestRecord",
    "SimulatorConfig",
    "SimulatorState",
    "TokenSpec",
    "render_envelope",
]
