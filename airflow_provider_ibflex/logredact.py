"""Keep the token out of every text: ``redact`` and a filter for HTTP libraries' own log lines.

The Flex token travels in the query string. ``redact`` removes it from URLs, messages and exceptions.
urllib3 logs each request line at DEBUG and httpx at INFO, both with the query string; Airflow's
masker covers task logs only once the token is registered, so the filter also covers logs outside a
task (the triggerer, tests, scripts) by redacting every ``t=`` parameter.
"""

from __future__ import annotations

import logging
import re

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


# A logger's filters see only the records logged on that very logger, not its children's: every
# logger that may print a URL or a header is named (httpcore logs response headers, a redirect's
# Location among them).
_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class TokenRedactingFilter(logging.Filter):
    """Rewrite a record's message with every ``t=``/``T=`` query parameter redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER = TokenRedactingFilter()


def install() -> None:
    """Attach the filter to the HTTP libraries' loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
