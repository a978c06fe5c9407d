"""What a body is, from its first bytes: envelope, XML statement, text statement or error page; and
whether a statement arrived whole (size, sha256 and tail as it streams)."""

from __future__ import annotations

import enum
import hashlib
from typing import Literal, Protocol

from airflow_provider_ibflex.protocol.errors import FlexParseError
from airflow_provider_ibflex.protocol.service import (
    ENVELOPE_ROOT,
    HEAD_BYTES,
    STATEMENT_END,
    STATEMENT_ROOT,
    TEXT_SNIFF_BYTES,
)


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
