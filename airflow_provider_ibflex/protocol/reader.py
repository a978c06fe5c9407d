"""What a response means: ``Outcome`` and the sans-I/O ``ResponseReader`` both transports feed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from airflow_provider_ibflex.protocol.bodies import HEAD_BYTES, BodyKind, classify_body
from airflow_provider_ibflex.protocol.endpoints import Endpoints, trusted_statement_url
from airflow_provider_ibflex.protocol.envelopes import Envelope, parse_envelope
from airflow_provider_ibflex.protocol.errors import Action, FlexParseError, error_info
from airflow_provider_ibflex.protocol.service import DEFAULT_BASE_URL, MAX_ENVELOPE_BYTES

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
