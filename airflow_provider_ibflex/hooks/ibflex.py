"""IBFlexHook: the Flex Web Service over ``requests``, for workers (operator, sensor, Test button).

The Hook only moves bytes: every decision about what a response means is the protocol core's.
It adds what a worker needs around it: the connection, one ``requests.Session`` with timeouts and a
User-Agent, the token's request budget shared with every other process (``pacing``), bounded retries
with backoff and jitter, token redaction, and streaming of the statement into object storage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import requests
import tenacity
import urllib3
from airflow.providers.common.compat.sdk import BaseHook, ObjectStoragePath

from airflow_provider_ibflex import logredact
from airflow_provider_ibflex.exceptions import IBFlexFatalError, IBFlexTransientError
from airflow_provider_ibflex.pacing import BudgetBusy, BudgetTight, TokenBudget
from airflow_provider_ibflex.protocol import (
    FlexParseError,
    Outcome,
    ResponseReader,
    describe,
    get_statement_params,
    redact,
    send_request_params,
    trusted_statement_url,
    validate_reference_code,
)
from airflow_provider_ibflex.settings import FlexSettings, load_settings
from airflow_provider_ibflex.storage import resolve_destination, write_statement
from airflow_provider_ibflex.tls import certificate_outcome, is_certificate_error, requests_verify

log = logging.getLogger(__name__)
CHUNK_SIZE = 1024 * 1024
# A reference code the service cannot know: answers to it show whether the token itself is accepted.
_PROBE_REFERENCE_CODE = "1"
# The Test button waits this long at most for the token's turn.
_TEST_BUDGET_WAIT = 15.0


@dataclass(frozen=True)
class FlexReference:
    """What a successful SendRequest returns.

    :param reference_code: the code to pass to GetStatement.
    :param url: the GetStatement URL to use (the service's, if trusted, else the configured one).
    """

    reference_code: str
    url: str


@dataclass(frozen=True)
class StatementResult:
    """What one GetStatement call came to.

    :param state: ``landed`` when the statement is at the destination, ``pending`` while it is generated,
        ``busy`` when the token's shared request budget had no turn soon enough (nothing was sent).
    :param message: a token-free sentence about it.
    :param metadata: for ``landed``: ``uri``, ``size``, ``sha256``, ``format`` and ``reference_code``.
    """

    state: Literal["landed", "pending", "busy"]
    message: str
    metadata: dict[str, Any] | None = None

    @property
    def landed(self) -> bool:
        return self.state == "landed"


class _Again(Exception):
    """One attempt met a transient failure (network, 5xx, a retry code)."""


class IBFlexHook(BaseHook):
    """Talk to Interactive Brokers' Flex Web Service with the token of an ``ibflex`` connection.

    :param ibflex_conn_id: the connection: token in ``password``; optional ``host`` (the service's base
        URL); extras ``version``, ``user_agent``, ``connect_timeout``, ``read_timeout``.
    """

    conn_name_attr = "ibflex_conn_id"
    default_conn_name = "ibflex_default"
    conn_type = "ibflex"
    hook_name = "Interactive Brokers Flex Web Service"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and prefilled fields of the connection form, for Airflow before 3.2
        (3.2 and later read the provider info)."""
        from airflow_provider_ibflex import connection_type

        # The provider info spells its keys with hyphens, the hook method with underscores.
        behaviour = connection_type()["ui-field-behaviour"]
        return {key.replace("-", "_"): value for key, value in behaviour.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The connection form's own fields, for Airflow before 3.2, built from the same field
        definitions 3.2 and later read from the provider info. Numbers are text fields (the form
        allows no decimal field); the connection reads them as numbers."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField
        from wtforms.validators import Optional

        from airflow_provider_ibflex import connection_type

        widgets: dict[str, Any] = {}
        for name, field in connection_type()["conn-fields"].items():
            schema = field["schema"]
            default = schema.get("default")
            kind = IntegerField if "integer" in schema["type"] else StringField
            widgets[name] = kind(
                lazy_gettext(field["label"]),
                description=field["description"],
                default=default if kind is IntegerField or default is None else str(default),
                validators=[Optional()],
                widget=BS3TextFieldWidget(),
            )
        return widgets

    def __init__(self, ibflex_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        logredact.install()
        self.ibflex_conn_id = ibflex_conn_id
        self.settings: FlexSettings = load_settings(ibflex_conn_id)
        self._session: requests.Session | None = None
        self._budget: TokenBudget | None = None

    # -- plumbing ------------------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        """One session per Hook: connection reuse, TLS verification on, the User-Agent set."""
        if self._session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.settings.user_agent
            session.verify = requests_verify()
            self._session = session
        return self._session

    @property
    def budget(self) -> TokenBudget:
        """The token's request budget, shared with every process that uses the token."""
        if self._budget is None:
            self._budget = TokenBudget(self.settings)
        return self._budget

    def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def on_kill(self) -> None:
        """The task is being killed: give back any turn of the token this Hook holds, so that other
        processes need not wait for its lease to lapse."""
        if self._budget is not None:
            self._budget.give_back_all()

    def redact(self, text: object) -> str:
        """Remove this connection's token from any text.

        :param text: a URL, a message or an exception.
        """
        return redact(text, self.settings.token)

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings.max_attempts),
            wait=tenacity.wait_exponential_jitter(initial=1, max=self.settings.backoff_max),
            retry=tenacity.retry_if_exception_type(_Again),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning(
            "Flex Web Service attempt %d/%d failed (%s); retrying in %.1f s",
            state.attempt_number,
            self.settings.max_attempts,
            error,
            wait,
        )

    def _get(self, url: str, params: dict[str, str]) -> requests.Response:
        """One GET, streaming (it returns once the head has arrived); network failures become ``_Again``."""
        try:
            return self.session.get(
                url,
                params=params,
                stream=True,
                # The token is in the query string: a redirect is refused, never followed.
                allow_redirects=False,
                # Given per request, or requests would prefer CURL_CA_BUNDLE to the session's bundle.
                verify=self.session.verify,
                # Connecting and each read have their own timeouts, and together one deadline for the
                # head (name resolution is outside it; the turn's lease is renewed meanwhile).
                timeout=urllib3.Timeout(  # type: ignore[arg-type] # requests passes it to urllib3 as is
                    connect=self.settings.connect_timeout,
                    read=self.settings.read_timeout,
                    total=self.budget.head_deadline,
                ),
            )
        except requests.exceptions.SSLError as exc:
            if is_certificate_error(exc):
                raise IBFlexFatalError(certificate_outcome(url)) from None
            raise _Again(self.redact(f"{type(exc).__name__}: {exc}")) from None
        except requests.RequestException as exc:
            raise _Again(self.redact(f"{type(exc).__name__}: {exc}")) from None

    def _exchange(
        self,
        url: str,
        params: dict[str, str],
        call: Literal["send", "get"],
        budget_wait: float | None = None,
        keep_spare: int = 0,
        holder: str | None = None,
    ) -> tuple[requests.Response, ResponseReader, Outcome, Iterator[bytes]]:
        """One request in the token's shared budget, read until its meaning is known.

        The turn ends when the answer's head arrives. A 1018 holds the token off for every process and
        asks again when the hold-off ends: waiting for the token is not a failed attempt.

        :param url: the endpoint.
        :param params: the query parameters.
        :param call: ``send`` or ``get``.
        :param budget_wait: seconds to wait for a turn at most (``BudgetBusy`` beyond); None: no limit.
        :param keep_spare: a poll: take a turn only if it leaves this many spare (else ``BudgetTight``).
        :param holder: the first turn's id: a turn reserved for this request by a trigger.
        """
        while True:
            with self.budget.turn(budget_wait, keep_spare, urgent=call == "send", holder=holder):
                response = self._get(url, params)
            holder = None  # a reservation serves one turn
            reader = ResponseReader(response.status_code, call, self.settings.endpoints)
            chunks = response.iter_content(CHUNK_SIZE)
            try:
                outcome = reader.read_head(chunks)
            except requests.RequestException as exc:
                response.close()
                raise _Again(self.redact(f"{type(exc).__name__}: {exc}")) from None
            if outcome.kind != "throttled":
                return response, reader, outcome, chunks
            response.close()
            self.budget.throttled()

    def _act_on(self, outcome: Outcome) -> None:
        """Raise for what is not a result: transient outcomes retry, fatal ones fail the task."""
        if outcome.kind == "retry":
            raise _Again(describe(outcome))
        if outcome.kind == "fatal":
            raise IBFlexFatalError(outcome)

    def _with_retries(self, attempt: Any, what: str) -> Any:
        try:
            for try_ in self._retrying():
                with try_:
                    return attempt()
        except _Again as exc:
            raise IBFlexTransientError(
                f"{what} failed after {self.settings.max_attempts} attempts: {exc}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the two calls -------------------------------------------------------------------------------

    def send_request(
        self, query_id: str | int, *, from_date: object | None = None, to_date: object | None = None
    ) -> FlexReference:
        """Ask the service to generate a Flex Query's statement (SendRequest).

        Waits as long as the token's shared budget needs (1018 included); transient failures are
        retried within the bounded policy; fatal codes raise ``IBFlexFatalError`` (no Airflow
        retries), with the code and a hint.

        :param query_id: the Flex Query id.
        :param from_date: optional first day (date or ``yyyymmdd``) overriding the query's period.
        :param to_date: optional last day, with ``from_date``; at most 365 days after it.
        """
        params = send_request_params(self.settings.token, query_id, self.settings.version, from_date, to_date)

        def attempt() -> FlexReference:
            response, _, outcome, _ = self._exchange(self.settings.endpoints.send_request, params, "send")
            response.close()
            self._act_on(outcome)
            if outcome.kind != "reference" or not outcome.reference_code:
                raise _Again(f"SendRequest returned no reference code ({outcome.message})")
            return FlexReference(outcome.reference_code, outcome.url or self.settings.endpoints.get_statement)

        reference: FlexReference = self._with_retries(attempt, f"SendRequest for query {params['q']}")
        log.info("SendRequest for query %s returned reference code %s", params["q"], reference.reference_code)
        return reference

    def download_statement(
        self,
        reference_code: str | int,
        destination: str | ObjectStoragePath,
        *,
        destination_conn_id: str | None = None,
        url: str | None = None,
        budget_wait: float | None = None,
        as_poll: bool = False,
        reservation: str | None = None,
    ) -> StatementResult:
        """Call GetStatement once and, if the statement is ready, stream it to ``destination`` atomically.

        A statement still being generated gives ``state="pending"``; no turn of the token's shared
        budget within ``budget_wait`` gives ``state="busy"``; fatal codes raise ``IBFlexFatalError``;
        transient failures are retried (a broken download starts again and leaves nothing behind).

        :param reference_code: the code SendRequest returned.
        :param destination: a URL (``file://``, ``s3://``, ...) or ObjectStoragePath naming the file.
        :param destination_conn_id: the storage connection, if the store needs one.
        :param url: the GetStatement URL from SendRequest; used only if trusted.
        :param budget_wait: seconds to wait for the token's turn at most; None waits as long as needed.
        :param as_poll: the statement is probably not ready yet: take a turn only when the token's
            budget has one to spare for the download and no SendRequest is waiting (else ``busy``).
        :param reservation: the id of a turn a trigger reserved for this download (its ``poll`` event).
        """
        code = validate_reference_code(reference_code)
        target = resolve_destination(destination, destination_conn_id)
        get_url = trusted_statement_url(url, self.settings.endpoints)
        params = get_statement_params(self.settings.token, code, self.settings.version)

        def attempt() -> StatementResult:
            nonlocal reservation
            holder, reservation = reservation, None  # a reservation serves the first attempt only
            response, reader, outcome, rest = self._exchange(
                get_url, params, "get", budget_wait, keep_spare=1 if as_poll else 0, holder=holder
            )
            with response:
                if outcome.kind == "pending":
                    return StatementResult("pending", describe(outcome))
                self._act_on(outcome)
                try:
                    metadata = write_statement(target, reader.kind, _prepend(reader.buffered, rest), code)
                except requests.RequestException as exc:
                    raise _Again(self.redact(f"download interrupted: {type(exc).__name__}: {exc}")) from None
                except FlexParseError as exc:  # truncated: the service's fault, worth another download
                    raise _Again(str(exc)) from None
            log.info(
                "Statement %s landed at %s (%d bytes, sha256 %s)",
                code,
                metadata["uri"],
                metadata["size"],
                metadata["sha256"],
            )
            return StatementResult("landed", f"statement landed at {metadata['uri']}", metadata)

        try:
            result: StatementResult = self._with_retries(attempt, f"GetStatement for reference code {code}")
        except (BudgetBusy, BudgetTight) as exc:
            return StatementResult("busy", f"no turn for the token: {exc}")
        return result

    # -- Airflow's Test button -------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Check the token with one GetStatement for a reference code that cannot exist."""
        params = get_statement_params(self.settings.token, _PROBE_REFERENCE_CODE, self.settings.version)
        try:
            response, _, outcome, _ = self._exchange(
                self.settings.endpoints.get_statement, params, "get", budget_wait=_TEST_BUDGET_WAIT
            )
            response.close()
        except _Again as exc:
            return False, f"Could not reach the Flex Web Service: {exc}"
        except BudgetBusy as exc:
            return False, f"Not tested: {exc}. Try again in a minute."
        if outcome.code in (1017, 1019, 1003):
            return True, f"The Flex Web Service accepted the token (answered {outcome.code} to a probe)."
        return False, self.redact(describe(outcome))


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest
