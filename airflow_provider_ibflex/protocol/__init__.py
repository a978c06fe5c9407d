"""The Flex Web Service protocol as pure functions over bytes and strings, with no I/O.

Everything the provider knows about the service lives here, one module per job:

- ``service``: the service's address, versions, limits and the roots of its bodies;
- ``errors``: the error table (what to do about each code, with a hint) and the core's exceptions;
- ``endpoints``: URLs from a connection's host, the trusted-URL rule, both calls' parameters;
- ``bodies``: what a body is from its first bytes, and whether a statement arrived whole;
- ``envelopes``: status envelopes of versions 2 and 3, parsed with defusedxml;
- ``reader``: what a response means (``Outcome``) and the sans-I/O ``ResponseReader``.

The Hook (requests) and the trigger (httpx) only move bytes and ask this package what they mean, so
the protocol is written once. Every name is re-exported here.
"""

from __future__ import annotations

from airflow_provider_ibflex.logredact import REDACTED, redact
from airflow_provider_ibflex.protocol.bodies import (
    BodyKind,
    HashLike,
    StatementDigest,
    classify_body,
    statement_is_complete,
)
from airflow_provider_ibflex.protocol.endpoints import (
    Endpoints,
    date_range,
    endpoints_for,
    get_statement_params,
    parse_flex_date,
    send_request_params,
    trusted_statement_url,
    validate_query_id,
    validate_reference_code,
    validate_version,
)
from airflow_provider_ibflex.protocol.envelopes import Envelope, parse_envelope
from airflow_provider_ibflex.protocol.errors import (
    ERROR_TABLE,
    Action,
    ErrorInfo,
    FlexError,
    FlexInputError,
    FlexParseError,
    code_for_message,
    error_info,
)
from airflow_provider_ibflex.protocol.reader import (
    Outcome,
    OutcomeKind,
    ResponseReader,
    describe,
    outcome_of_body_kind,
    outcome_of_error,
    outcome_of_get_statement,
    outcome_of_send_request,
)
from airflow_provider_ibflex.protocol.service import (
    DEFAULT_BASE_URL,
    DEFAULT_VERSION,
    ENVELOPE_ROOT,
    HEAD_BYTES,
    MAX_DATE_SPAN_DAYS,
    MAX_ENVELOPE_BYTES,
    MAX_REQUESTS_PER_MINUTE,
    MIN_INTERVAL_SECONDS,
    STATEMENT_END,
    STATEMENT_ROOT,
    SUPPORTED_VERSIONS,
    TEXT_SNIFF_BYTES,
    TRUSTED_DOMAIN,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_VERSION",
    "ENVELOPE_ROOT",
    "ERROR_TABLE",
    "HEAD_BYTES",
    "MAX_DATE_SPAN_DAYS",
    "MAX_ENVELOPE_BYTES",
    "MAX_REQUESTS_PER_MINUTE",
    "MIN_INTERVAL_SECONDS",
    "REDACTED",
    "STATEMENT_END",
    "STATEMENT_ROOT",
    "SUPPORTED_VERSIONS",
    "TEXT_SNIFF_BYTES",
    "TRUSTED_DOMAIN",
    "Action",
    "BodyKind",
    "Endpoints",
    "Envelope",
    "ErrorInfo",
    "FlexError",
    "FlexInputError",
    "FlexParseError",
    "HashLike",
    "Outcome",
    "OutcomeKind",
    "ResponseReader",
    "StatementDigest",
    "classify_body",
    "code_for_message",
    "date_range",
    "describe",
    "endpoints_for",
    "error_info",
    "get_statement_params",
    "outcome_of_body_kind",
    "outcome_of_error",
    "outcome_of_get_statement",
    "outcome_of_send_request",
    "parse_envelope",
    "parse_flex_date",
    "redact",
    "send_request_params",
    "statement_is_complete",
    "trusted_statement_url",
    "validate_query_id",
    "validate_reference_code",
    "validate_version",
]
