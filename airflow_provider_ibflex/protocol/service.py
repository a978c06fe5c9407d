"""What the Flex Web Service is: its address, versions, limits and the roots of its bodies."""

from __future__ import annotations

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


def is_digits(text: str) -> bool:
    """Whether ``text`` is a non-empty string of ASCII digits, as every number the service writes is
    (``str.isdigit`` alone also accepts ``"²"`` or ``"٣"``, which ``int`` may refuse or misread).

    :param text: the text.
    """
    return text.isascii() and text.isdigit()
