"""The Flex Web Service protocol as pure functions over bytes and strings, with no I/O.

Everything the provider knows about the service lives here: endpoint URLs, request parameters, how to
tell an envelope from a statement by its first bytes, envelope parsing (versions 2 and 3), the error
table with what to do about each code, the trusted-URL rule for the ``<Url>`` the service returns,
and token redaction. The Hook (requests) and the trigger (httpx) only move bytes and
ask this module what they mean, so the protocol is written once.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

DEFAULT_BASE_URL = "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService"
TRUSTED_DOMAIN = "interactivebrokers.com"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_VERSION = 3
MAX_DATE_SPAN_DAYS = 365
MAX_ENVELOPE_BYTES = 1024 * 1024
# Enough to see past a BOM, whitespace and an XML declaration to the root element's name.
HEAD_BYTES = 4096
# A text statement is recognised on this many bytes, so the verdict never depends on chunking.
TEXT_SNIFF_BYTES = 512
STATEMENT_ROOT = b"FlexQueryResponse"
ENVELOPE_ROOT = b"FlexStatementResponse"
STATEMENT_END = b"</FlexQueryResponse>"
# The service allows one request per second and ten per minute for each token.
MIN_INTERVAL_SECONDS = 1.0
MAX_REQUESTS_PER_MINUTE = 10


class FlexError(Exception):
    """Base class of every error the protocol core raises."""


class FlexParseError(FlexError):
    """A body could not be understood as a Flex envelope or statement."""


class FlexInputError(FlexError, ValueError):
    """A value given by the user (query id, reference code, dates, connection) is not acceptable."""


# --------------------------------------------------------------------------------------------------
# The error table
# --------------------------------------------------------------------------------------------------


class Action(str, enum.Enum):
    """What a caller should do about a service response."""

    POLL = "poll"  # the statement is being generated: keep calling GetStatement
    THROTTLED = "throttled"  # 1018: wait (at least a minute) and call again
    RETRY = "retry"  # transient on the service's side: retry a bounded number of times
    FATAL = "fatal"  # retrying cannot help: fail with the hint


@dataclass(frozen=True)
class ErrorInfo:
    """One row of the service's error table.

    :param code: the numeric ErrorCode.
    :param message: the service's ErrorMessage as documented.
    :param action: what to do about it.
    :param hint: for fatal codes, what the user can do.
    """

    code: int
    message: str
    action: Action
    hint: str = ""


_RETRY_HINT = "The service asks to try again shortly."
ERROR_TABLE: dict[int, ErrorInfo] = {
    info.code: info
    for info in (
        ErrorInfo(
            1001,
            "Statement could not be generated at this time. Please try again shortly.",
            Action.RETRY,
            "If this persists, check the connection's host: the legacy servlet endpoint "
            "(/Universal/servlet/FlexStatementService...) answers 1001 to every request since 2026; "
            f"use {DEFAULT_BASE_URL}.",
        ),
        ErrorInfo(
            1003,
            "Statement is not available.",
            Action.FATAL,
            "No statement exists for this request: check the query's period and accounts in Account "
            "Management.",
        ),
        ErrorInfo(1004, "Statement is incomplete at this time. Please try again shortly.", Action.RETRY),
        ErrorInfo(1005, "Settlement data is not ready at this time. Please try again shortly.", Action.RETRY),
        ErrorInfo(1006, "FIFO P/L data is not ready at this time. Please try again shortly.", Action.RETRY),
        ErrorInfo(1007, "MTM P/L data is not ready at this time. Please try again shortly.", Action.RETRY),
        ErrorInfo(
            1008, "MTM and FIFO P/L data is not ready at this time. Please try again shortly.", Action.RETRY
        ),
        ErrorInfo(
            1009,
            "The server is under heavy load. Statement could not be generated at this time. "
            "Please try again shortly.",
            Action.RETRY,
        ),
        ErrorInfo(
            1010,
            "Legacy Flex Queries are no longer supported. Please convert over to Activity Flex.",
            Action.FATAL,
            "Recreate the query as an Activity Flex Query in Account Management and use its new query id.",
        ),
        ErrorInfo(
            1011,
            "Service account is inactive.",
            Action.FATAL,
            "Reactivate the Flex Web Service in Account Management (Reports > Settings > Flex Web "
            "Service); its status must be Active.",
        ),
        ErrorInfo(
            1012,
            "Token has expired.",
            Action.FATAL,
            "Generate a new token in Account Management (Reports > Settings > Flex Web Service), "
            "optionally with a longer validity, and store it as the connection's password.",
        ),
        ErrorInfo(
            1013,
            "IP restriction.",
            Action.FATAL,
            "The token is bound to another IP address: run from that address, or generate a token "
            "without an IP restriction (or bound to this machine's public IP).",
        ),
        ErrorInfo(
            1014,
            "Query is invalid.",
            Action.FATAL,
            "Check the query id: it is the number shown next to the Flex Query in Account Management, "
            "and the query must belong to the token's account.",
        ),
        ErrorInfo(
            1015,
            "Token is invalid.",
            Action.FATAL,
            "Check the connection's password. Generating a new token ends the old one: use the newest.",
        ),
        ErrorInfo(
            1016,
            "Account is invalid.",
            Action.FATAL,
            "The account behind the token or the query is closed or not permitted: check it in Account "
            "Management.",
        ),
        ErrorInfo(
            1017,
            "Reference code is invalid.",
            Action.FATAL,
            "The reference code is unknown or expired: call SendRequest again for a new one.",
        ),
        ErrorInfo(
            1018,
            "Too many requests have been made from this token. Please try again shortly.",
            Action.THROTTLED,
            "Limited to one request per second, 10 requests per minute (per token).",
        ),
        ErrorInfo(1019, "Statement generation in progress. Please try again shortly.", Action.POLL),
        ErrorInfo(
            1020,
            "Invalid request or unable to validate request.",
            Action.FATAL,
            "Check the token and query id. A query created or edited moments ago may need a few minutes "
            "before the service accepts it.",
        ),
        ErrorInfo(
            1021, "Statement could not be retrieved at this time. Please try again shortly.", Action.RETRY
        ),
        ErrorInfo(
            1025,
            "Too many failed attempts. Please review your configuration.",
            Action.FATAL,
            "Stop and check the token, query id and host before trying again: repeated failures lock "
            "out this IP address for a while.",
        ),
    )
}


def error_info(code: int | None, message: str = "") -> ErrorInfo:
    """Return the table row for an error code; unknown codes are fatal.

    :param code: the ErrorCode, or None when the service gave no code.
    :param message: the service's message, kept for unknown codes.
    """
    if code is not None and code in ERROR_TABLE:
        return ERROR_TABLE[code]
    return ErrorInfo(
        code or 0,
        message or "Unknown error.",
        Action.FATAL,
        "The service returned an error this provider does not know; check the query and token in "
        "Account Management.",
    )


def _normalise_message(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").lower()


_CODE_BY_MESSAGE = {_normalise_message(info.message): code for code, info in ERROR_TABLE.items()}


def code_for_message(text: str) -> int | None:
    """Map a version-2 error text back to its numeric code.

    The service has extended some messages (1018 adds the limits), so a message that starts with a
    known one maps to its code too.

    :param text: the text of a v2 ``<code>`` element.
    """
    wanted = _normalise_message(text)
    if wanted in _CODE_BY_MESSAGE:
        return _CODE_BY_MESSAGE[wanted]
    for known, code in _CODE_BY_MESSAGE.items():
        if wanted.startswith(known):
            return code
    return None


# --------------------------------------------------------------------------------------------------
# Endpoints and request parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """The two URLs of the service for one connection.

    :param send_request: the SendRequest URL.
    :param get_statement: the GetStatement URL.
    """

    send_request: str
    get_statement: str

    @property
    def host(self) -> str:
        return urlsplit(self.send_request).hostname or ""


def endpoints_for(base_url: str | None) -> Endpoints:
    """Work out both URLs from a connection's host.

    :param base_url: the service's base URL (``.../FlexWebService``), or a full SendRequest URL such
        as the legacy ``.../FlexStatementService.SendRequest``; None or empty means the current service.
    """
    base = (base_url or "").strip() or DEFAULT_BASE_URL
    if "://" not in base:
        base = "https://" + base
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FlexInputError(
            f"host {base_url!r} is not an http(s) URL; use the service's base URL such as {DEFAULT_BASE_URL}"
        )
    if parts.query or parts.fragment:
        raise FlexInputError(f"host {base_url!r} must not carry a query string or fragment")
    base = base.rstrip("/")
    if base.endswith("SendRequest"):
        return Endpoints(base, base[: -len("SendRequest")] + "GetStatement")
    if base.endswith("GetStatement"):
        return Endpoints(base[: -len("GetStatement")] + "SendRequest", base)
    return Endpoints(base + "/SendRequest", base + "/GetStatement")


def trusted_statement_url(returned_url: str | None, endpoints: Endpoints) -> str:
    """Choose the GetStatement URL: the service's ``<Url>`` only if it is safe to send the token there.

    It must be https and on the configured host or a host under ``interactivebrokers.com``; anything
    else (another domain, plain http, junk) falls back to the configured GetStatement URL.

    :param returned_url: the ``<Url>``/``<url>`` of a SendRequest envelope, if any.
    :param endpoints: the connection's endpoints.
    """
    if not returned_url:
        return endpoints.get_statement
    try:
        parts = urlsplit(returned_url.strip())
        host = (parts.hostname or "").lower().rstrip(".")
    except ValueError:
        return endpoints.get_statement
    if parts.scheme != "https" or not host or parts.username or parts.password or parts.query:
        return endpoints.get_statement
    if host == endpoints.host.lower() or host == TRUSTED_DOMAIN or host.endswith("." + TRUSTED_DOMAIN):
        return returned_url.strip()
    return endpoints.get_statement


def validate_query_id(query_id: object) -> str:
    """Return the query id as a string of digits, or raise naming the field.

    :param query_id: the Flex Query id (the number shown in Account Management).
    """
    text = str(query_id).strip() if query_id is not None else ""
    if not text.isdigit() or not text.isascii():
        raise FlexInputError(
            f"query_id must be the numeric Flex Query id shown in Account Management, got {query_id!r}"
        )
    return text


def validate_reference_code(reference_code: object) -> str:
    """Return the reference code as a string of digits, or raise naming the field.

    :param reference_code: the code SendRequest returned.
    """
    text = str(reference_code).strip() if reference_code is not None else ""
    if not text.isdigit() or not text.isascii():
        raise FlexInputError(
            f"reference_code must be the numeric code returned by SendRequest, got {reference_code!r}"
        )
    return text


def validate_version(version: object) -> int:
    """Return the service version (2 or 3), or raise naming the field.

    :param version: the connection's ``version`` extra.
    """
    try:
        number = int(str(version).strip())
    except ValueError:
        number = -1
    if number not in SUPPORTED_VERSIONS:
        raise FlexInputError(f"version must be 2 or 3 (3 is recommended), got {version!r}")
    return number


def parse_flex_date(value: object, field: str) -> datetime.date:
    """Turn a date, datetime or ``yyyymmdd`` / ``yyyy-mm-dd`` string into a date.

    :param value: the value given by the user.
    :param field: the parameter's name, for the error message.
    """
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    text = str(value).strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise FlexInputError(f"{field} must be a date or a yyyymmdd string, got {value!r}")


def date_range(
    from_date: object | None, to_date: object | None
) -> tuple[datetime.date, datetime.date] | None:
    """Validate an ``fd``/``td`` override: both or neither, ``fd <= td``, at most 365 days.

    :param from_date: the first day (``fd``).
    :param to_date: the last day (``td``).
    """
    if from_date in (None, "") and to_date in (None, ""):
        return None
    if from_date in (None, "") or to_date in (None, ""):
        raise FlexInputError(
            "from_date and to_date must be given together (or neither, for the query's own period)"
        )
    start = parse_flex_date(from_date, "from_date")
    end = parse_flex_date(to_date, "to_date")
    if start > end:
        raise FlexInputError(f"from_date {start:%Y%m%d} is after to_date {end:%Y%m%d}")
    if (end - start).days > MAX_DATE_SPAN_DAYS:
        raise FlexInputError(
            f"from_date {start:%Y%m%d} to to_date {end:%Y%m%d} spans {(end - start).days} days; "
            f"the service allows at most {MAX_DATE_SPAN_DAYS}: split the period into several requests"
        )
    return start, end


def send_request_params(
    token: str,
    query_id: object,
    version: int = DEFAULT_VERSION,
    from_date: object | None = None,
    to_date: object | None = None,
) -> dict[str, str]:
    """Query parameters of a SendRequest call.

    :param token: the Flex Web Service token.
    :param query_id: the Flex Query id.
    :param version: 2 or 3.
    :param from_date: optional first day overriding the query's period.
    :param to_date: optional last day overriding the query's period.
    """
    params = {"t": token, "q": validate_query_id(query_id), "v": str(validate_version(version))}
    period = date_range(from_date, to_date)
    if period:
        params["fd"], params["td"] = (day.strftime("%Y%m%d") for day in period)
    return params


def get_statement_params(
    token: str, reference_code: object, version: int = DEFAULT_VERSION
) -> dict[str, str]:
    """Query parameters of a GetStatement call.

    :param token: the Flex Web Service token.
    :param reference_code: the code SendRequest returned.
    :param version: 2 or 3.
    """
    return {"t": token, "q": validate_reference_code(reference_code), "v": str(validate_version(version))}


# --------------------------------------------------------------------------------------------------
# Bodies: what the first bytes say
# --------------------------------------------------------------------------------------------------


class BodyKind(str, enum.Enum):
    """What a response body is, judged from its first bytes."""

    NEED_MORE = "need_more"  # not enough bytes yet to tell
    ENVELOPE = "envelope"  # <FlexStatementResponse>: status or error
    XML_STATEMENT = "xml"  # <FlexQueryResponse>: the statement itself
    TEXT_STATEMENT = "csv"  # a CSV / tab-delimited statement
    HTML = "html"  # an error page, never a statement
    EMPTY = "empty"  # no body at all
    UNKNOWN = "unknown"  # markup of another root, or binary: not something the service sends


_BOMS = (b"\xef\xbb\xbf",)
_WS = b" \t\r\n"
_ROOT_END = b" \t\r\n>/"


def _skip_prolog(data: bytes) -> tuple[bytes, bool]:
    """Strip a BOM, whitespace, XML declarations and comments; say whether more bytes are needed."""
    for bom in _BOMS:
        if data.startswith(bom):
            data = data[len(bom) :]
    while True:
        data = data.lstrip(_WS)
        if data.startswith(b"<?"):
            end = data.find(b"?>")
            if end < 0:
                return data, True
            data = data[end + 2 :]
        elif data.startswith(b"<!--"):
            end = data.find(b"-->")
            if end < 0:
                return data, True
            data = data[end + 3 :]
        elif data[:9].lower() == b"<!doctype" and not _is_html_doctype(data):
            # A document type declaration before the root: skipped to see the root, so that an envelope
            # with a DTD reaches the envelope parser, which refuses it as such.
            end = _doctype_end(data)
            if end < 0:
                return data, True
            data = data[end:]
        else:
            return data, False


def _is_html_doctype(data: bytes) -> bool:
    name = data[9:].lstrip(_WS)
    return len(name) < 4 or name[:4].lower() == b"html"


def _doctype_end(data: bytes) -> int:
    """Where a ``<!DOCTYPE ...>`` ends (past its internal subset, if any); -1 if not in ``data``."""
    close = data.find(b">")
    subset = data.find(b"[")
    if 0 <= subset < close or (subset >= 0 and close < 0):
        subset_end = data.find(b"]", subset)
        if subset_end < 0:
            return -1
        close = data.find(b">", subset_end)
    return -1 if close < 0 else close + 1


def _starts_with_root(data: bytes, root: bytes) -> bool | None:
    """True/False when decided, None when the bytes end before the root's name does."""
    tag = b"<" + root
    if len(data) <= len(tag):
        return None if tag.startswith(data) else False
    return data.startswith(tag) and data[len(tag) : len(tag) + 1] in [bytes([c]) for c in _ROOT_END]


def classify_body(head: bytes, *, complete: bool = False) -> BodyKind:
    """Tell an envelope, an XML statement, a text statement and an error page apart from a body's start.

    :param head: the first bytes of the body (``HEAD_BYTES`` are always enough).
    :param complete: True when ``head`` is the whole body, so no more bytes will come.
    """
    if not head.strip(_WS + b"\xef\xbb\xbf"):
        return BodyKind.EMPTY if complete else BodyKind.NEED_MORE
    data, unfinished = _skip_prolog(head)
    if unfinished or not data:
        if complete or len(head) >= HEAD_BYTES:
            return BodyKind.UNKNOWN
        return BodyKind.NEED_MORE
    if data[:1] == b"<":
        lowered = data[:16].lower()
        if lowered.startswith((b"<!doctype", b"<html")):
            return BodyKind.HTML
        for root, kind in ((ENVELOPE_ROOT, BodyKind.ENVELOPE), (STATEMENT_ROOT, BodyKind.XML_STATEMENT)):
            decided = _starts_with_root(data, root)
            if decided:
                return kind
            if decided is None and not complete:
                return BodyKind.NEED_MORE
        if (
            len(data) < 16
            and not complete
            and (b"<!doctype".startswith(lowered) or b"<html".startswith(lowered))
        ):
            return BodyKind.NEED_MORE
        return BodyKind.UNKNOWN
    sample = data[:TEXT_SNIFF_BYTES]
    if len(sample) < TEXT_SNIFF_BYTES and not complete:
        return BodyKind.NEED_MORE
    cut = len(data) > TEXT_SNIFF_BYTES
    return BodyKind.TEXT_STATEMENT if _looks_like_text(sample, cut) else BodyKind.UNKNOWN


def _looks_like_text(sample: bytes, cut: bool) -> bool:
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the sample is still text.
        return cut and exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data"
    return True


def statement_is_complete(kind: BodyKind, tail: bytes) -> bool:
    """Whether a statement's last bytes show it arrived whole.

    An XML statement must end with ``</FlexQueryResponse>`` (trailing whitespace allowed); a text
    statement has no end marker, so only its transport (length, clean close) can vouch for it.

    :param kind: the body's kind.
    :param tail: the last bytes of the body (at least ``len(STATEMENT_END)`` plus trailing whitespace).
    """
    if kind is BodyKind.XML_STATEMENT:
        return tail.rstrip(_WS).endswith(STATEMENT_END)
    return kind is BodyKind.TEXT_STATEMENT


class HashLike(Protocol):
    """What StatementDigest needs of a hash: ``hashlib.sha256()`` or something that wraps it."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class StatementDigest:
    """Size, sha256 and tail of a statement, fed chunk by chunk while it streams.

    :param kind: the statement's kind (XML or text).
    :param sha: the sha256 to feed; a fresh ``hashlib.sha256()`` by default.
    """

    _TAIL = 256

    def __init__(self, kind: BodyKind, sha: HashLike | None = None) -> None:
        self.kind = kind
        self.size = 0
        self._sha: HashLike = sha if sha is not None else hashlib.sha256()
        self._tail = b""

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._sha.update(chunk)
        self._tail = (self._tail + chunk[-self._TAIL :])[-self._TAIL :]

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def format(self) -> Literal["xml", "csv"]:
        return "xml" if self.kind is BodyKind.XML_STATEMENT else "csv"

    def check_complete(self) -> None:
        """Raise FlexParseError unless the statement ended as a whole statement ends."""
        if self.size == 0:
            raise FlexParseError("the statement body is empty")
        if not statement_is_complete(self.kind, self._tail):
            raise FlexParseError(
                "the XML statement is truncated: it does not end with </FlexQueryResponse> "
                f"(received {self.size} bytes)"
            )


# --------------------------------------------------------------------------------------------------
# Envelopes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A parsed ``<FlexStatementResponse>``.

    :param version: 3 when it has ``Status``/``ErrorCode`` elements, else 2.
    :param status: v3 ``Status`` (Success, Fail, Warn), None for v2.
    :param reference_code: the reference code of a successful SendRequest.
    :param url: the ``Url``/``url`` element, if any.
    :param error_code: the numeric error code, if the envelope reports an error.
    :param error_message: the service's error text.
    """

    version: int
    status: str | None
    reference_code: str | None
    url: str | None
    error_code: int | None
    error_message: str | None

    @property
    def is_error(self) -> bool:
        return self.error_code is not None or self.error_message is not None


def _children(root: Element) -> dict[str, str]:
    values: dict[str, str] = {}
    for child in root:
        if isinstance(child.tag, str):
            values.setdefault(child.tag.lower(), (child.text or "").strip())
    return values


def parse_envelope(body: bytes) -> Envelope:
    """Parse a status envelope of either version with defusedxml.

    :param body: the whole envelope (at most ``MAX_ENVELOPE_BYTES``).
    """
    if len(body) > MAX_ENVELOPE_BYTES:
        raise FlexParseError(
            f"the status envelope is {len(body)} bytes, over the {MAX_ENVELOPE_BYTES} byte limit: refused"
        )
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise FlexParseError(
            f"the status envelope declares a DTD or entities ({type(exc).__name__}), which Flex envelopes "
            "never do: refused unparsed, nothing expanded"
        ) from None
    except (SafeET.ParseError, ValueError) as exc:
        raise FlexParseError(f"the status envelope is not well-formed XML: {type(exc).__name__}") from None
    if not isinstance(root.tag, str) or root.tag != ENVELOPE_ROOT.decode():
        raise FlexParseError(f"expected a <FlexStatementResponse> envelope, found <{root.tag}>")
    values = _children(root)
    if "status" in values or "errorcode" in values or "referencecode" in values:
        return _parse_v3(values)
    return _parse_v2(values)


def _parse_v3(values: Mapping[str, str]) -> Envelope:
    raw_code = values.get("errorcode") or None
    code: int | None = None
    if raw_code is not None:
        code = int(raw_code) if raw_code.isdigit() else 0
    message = values.get("errormessage") or None
    reference = values.get("referencecode") or None
    status = values.get("status") or None
    if code is None and reference is None:
        # A Fail/Warn without an ErrorCode: classify by its message rather than trust Status.
        code = code_for_message(message or "") if message else None
        if code is None:
            raise FlexParseError(
                f"the v3 envelope has neither ReferenceCode nor ErrorCode (Status {status!r})"
            )
    if reference is not None and not reference.isdigit():
        raise FlexParseError(f"the v3 envelope's ReferenceCode is not numeric: {reference[:40]!r}")
    return Envelope(3, status, reference, values.get("url") or None, code, message)


def _parse_v2(values: Mapping[str, str]) -> Envelope:
    if "code" not in values:
        raise FlexParseError("the envelope has no <code> (v2) nor <Status> (v3) element")
    code_text = values["code"]
    url = values.get("url") or None
    if code_text.isdigit():
        return Envelope(2, None, code_text, url, None, None)
    return Envelope(2, None, None, url, code_for_message(code_text) or 0, code_text or "Empty <code>.")


# --------------------------------------------------------------------------------------------------
# What a response means
# --------------------------------------------------------------------------------------------------

OutcomeKind = Literal["reference", "statement", "pending", "throttled", "retry", "fatal"]


@dataclass(frozen=True)
class Outcome:
    """The meaning of one response, in the provider's terms.

    :param kind: ``reference`` (SendRequest succeeded), ``statement`` (the body is the statement),
        ``pending`` (still generating), ``throttled`` (1018), ``retry`` (transient), ``fatal``.
    :param message: a human sentence, token-free.
    :param code: the service's error code, if any.
    :param hint: what the user can do, for fatal codes.
    :param reference_code: the reference code of a SendRequest.
    :param url: the (trusted) GetStatement URL of a SendRequest.
    """

    kind: OutcomeKind
    message: str
    code: int | None = None
    hint: str = ""
    reference_code: str | None = None
    url: str | None = None


_ACTION_TO_KIND: dict[Action, OutcomeKind] = {
    Action.POLL: "pending",
    Action.THROTTLED: "throttled",
    Action.RETRY: "retry",
    Action.FATAL: "fatal",
}


def outcome_of_error(envelope: Envelope) -> Outcome:
    """Classify an error envelope on its ErrorCode (never its Status).

    :param envelope: an envelope whose ``is_error`` is true.
    """
    info = error_info(envelope.error_code, envelope.error_message or "")
    said = envelope.error_message or info.message
    code = envelope.error_code if envelope.error_code else None
    label = f"{code}" if code else "unknown code"
    return Outcome(_ACTION_TO_KIND[info.action], f"Flex Web Service error {label}: {said}", code, info.hint)


def outcome_of_send_request(envelope: Envelope, endpoints: Endpoints) -> Outcome:
    """What a SendRequest envelope means.

    :param envelope: the parsed envelope.
    :param endpoints: the connection's endpoints, to vet the returned URL.
    """
    if envelope.is_error:
        outcome = outcome_of_error(envelope)
        # SendRequest never answers "in progress"; a stray 1019 there is transient.
        return outcome if outcome.kind != "pending" else _replace_kind(outcome, "retry")
    url = trusted_statement_url(envelope.url, endpoints)
    return Outcome(
        "reference", f"reference code {envelope.reference_code}", None, "", envelope.reference_code, url
    )


def outcome_of_get_statement(envelope: Envelope) -> Outcome:
    """What a GetStatement envelope means (a statement never comes as an envelope).

    :param envelope: the parsed envelope.
    """
    if envelope.is_error:
        return outcome_of_error(envelope)
    raise FlexParseError("GetStatement returned a success envelope instead of a statement")


def outcome_of_body_kind(kind: BodyKind, http_status: int) -> Outcome | None:
    """The outcome a body's kind decides on its own, or None when the envelope must be parsed.

    :param kind: the body's kind from ``classify_body``.
    :param http_status: the HTTP status code.
    """
    if http_status >= 500 or http_status == 429:
        return Outcome("retry", f"HTTP {http_status} from the Flex Web Service")
    if 300 <= http_status < 400:
        return Outcome(
            "fatal",
            f"HTTP {http_status}: the Flex Web Service redirected the request elsewhere",
            hint="Redirects are never followed, since the token travels in the query string: set the "
            f"connection's host to the service's base URL, such as {DEFAULT_BASE_URL}.",
        )
    if kind is BodyKind.ENVELOPE:
        return None
    if http_status >= 400:
        return Outcome(
            "fatal",
            f"HTTP {http_status} from the Flex Web Service",
            hint="Check the connection's host: it should be the service's base URL such as "
            f"{DEFAULT_BASE_URL}.",
        )
    if kind in (BodyKind.XML_STATEMENT, BodyKind.TEXT_STATEMENT):
        return Outcome("statement", f"statement ({kind.value})")
    if kind is BodyKind.HTML:
        return Outcome(
            "retry",
            "the Flex Web Service answered with an HTML page instead of a Flex response",
            hint="If this persists, check the connection's host (a wrong path returns an HTML 404 page).",
        )
    return Outcome("retry", f"the Flex Web Service answered with an unrecognised body ({kind.value})")


def _replace_kind(outcome: Outcome, kind: OutcomeKind) -> Outcome:
    return Outcome(kind, outcome.message, outcome.code, outcome.hint, outcome.reference_code, outcome.url)


def describe(outcome: Outcome) -> str:
    """One sentence for logs and exceptions: message and hint.

    :param outcome: the outcome to describe.
    """
    return f"{outcome.message} {outcome.hint}".strip()


class ResponseReader:
    """Sans-I/O reader of one response: feed it body chunks until it has decided what the response is.

    A transport makes the request, hands over the status code, feeds chunks while ``feed`` returns
    False and calls ``end`` if the body ends first. Then ``outcome`` says what the response means; for a
    statement, ``buffered`` holds the bytes already read, which belong at the start of the statement.
    Envelopes are buffered whole (refused over ``MAX_ENVELOPE_BYTES``); a statement is never buffered
    beyond its head.

    :param http_status: the response's status code.
    :param call: ``"send"`` for SendRequest, ``"get"`` for GetStatement.
    :param endpoints: the connection's endpoints, to vet a returned ``<Url>``.
    """

    def __init__(self, http_status: int, call: Literal["send", "get"], endpoints: Endpoints) -> None:
        self.http_status = http_status
        self.call = call
        self.endpoints = endpoints
        self.kind = BodyKind.NEED_MORE
        self.buffered = b""
        self.outcome: Outcome | None = None
        if http_status >= 500 or http_status == 429 or 300 <= http_status < 400:
            self.outcome = outcome_of_body_kind(BodyKind.UNKNOWN, http_status)

    @property
    def decided(self) -> bool:
        return self.outcome is not None

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk; return True once no more bytes are needed.

        :param chunk: the next bytes of the body.
        """
        if self.outcome is not None:
            return True
        self.buffered += chunk
        if self.kind is BodyKind.NEED_MORE:
            self.kind = classify_body(self.buffered[:HEAD_BYTES])
        if self.kind is BodyKind.ENVELOPE:
            if len(self.buffered) > MAX_ENVELOPE_BYTES:
                self.outcome = Outcome(
                    "retry", f"a status envelope over {MAX_ENVELOPE_BYTES} bytes was refused"
                )
                return True
            return False
        if self.kind is BodyKind.NEED_MORE:
            return False
        self.outcome = outcome_of_body_kind(self.kind, self.http_status)
        return True

    def read_head(self, chunks: Iterable[bytes]) -> Outcome:
        """Feed chunks until the response's meaning is known (or the body ends); return it.

        Chunks not consumed stay in ``chunks``: for a statement, they follow ``buffered``.

        :param chunks: the body's chunks, as a transport yields them.
        """
        if not self.decided:
            for chunk in chunks:
                if self.feed(chunk):
                    break
        return self.verdict()

    def verdict(self) -> Outcome:
        """What the response means, once ``feed`` returned True or the body ended."""
        return self.outcome if self.outcome is not None else self.end()

    def end(self) -> Outcome:
        """The body has ended: decide on what was received."""
        if self.outcome is None:
            if self.kind is BodyKind.NEED_MORE:
                self.kind = classify_body(self.buffered, complete=True)
            self.outcome = outcome_of_body_kind(self.kind, self.http_status) or self._envelope_outcome()
        return self.outcome

    def _envelope_outcome(self) -> Outcome:
        try:
            envelope = parse_envelope(self.buffered)
            if self.call == "send":
                return outcome_of_send_request(envelope, self.endpoints)
            return outcome_of_get_statement(envelope)
        except FlexParseError as exc:
            return Outcome("retry", f"unreadable response from the Flex Web Service: {exc}")


# --------------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------------

REDACTED = "***"
_TOKEN_PARAM = re.compile(r"(?i)([?&;]t=)[^&#\s'\"<>]*")


def redact(text: object, token: str | None = None) -> str:
    """Remove the token from any text: ``t=``/``T=`` URL parameters and the token itself.

    :param text: a URL, message or anything with a ``str()``.
    :param token: the token, when known, to remove wherever it appears.
    """
    result = str(text)
    if token:
        result = result.replace(token, REDACTED)
    return _TOKEN_PARAM.sub(lambda m: m.group(1) + REDACTED, result)
