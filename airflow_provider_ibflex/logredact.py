"""Keep the token out of HTTP libraries' own log lines.

urllib3 logs each request line at DEBUG and httpx at INFO, both with the query string, where the Flex
token travels. Airflow's masker covers task logs only once the token is registered; this filter also
covers logs outside a task (the triggerer, tests, scripts) by redacting every ``t=`` parameter.
"""

from __future__ import annotations

import logging

from airflow_provider_ibflex.protocol import redact

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
