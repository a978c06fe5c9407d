"""The service's error table (code -> what to do about it, with a hint) and the core's exceptions."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from airflow_provider_ibflex.protocol.service import DEFAULT_BASE_URL


class FlexError(Exception):
    """Base class of every error the protocol core raises."""


class FlexParseError(FlexError):
    """A body could not be understood as a Flex envelope or statement."""


class FlexInputError(FlexError, ValueError):
    """A value given by the user (query id, reference code, dates, connection) is not acceptable."""


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
