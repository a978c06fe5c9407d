"""Status envelopes (``<FlexStatementResponse>``) of versions 2 and 3, parsed with defusedxml only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from airflow_provider_ibflex.protocol.errors import FlexParseError, code_for_message
from airflow_provider_ibflex.protocol.service import ENVELOPE_ROOT, MAX_ENVELOPE_BYTES, is_digits


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
        code = int(raw_code) if is_digits(raw_code) else 0
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
    if reference is not None and not is_digits(reference):
        raise FlexParseError(f"the v3 envelope's ReferenceCode is not numeric: {reference[:40]!r}")
    return Envelope(3, status, reference, values.get("url") or None, code, message)


def _parse_v2(values: Mapping[str, str]) -> Envelope:
    if "code" not in values:
        raise FlexParseError("the envelope has no <code> (v2) nor <Status> (v3) element")
    code_text = values["code"]
    url = values.get("url") or None
    if is_digits(code_text):
        return Envelope(2, None, code_text, url, None, None)
    return Envelope(2, None, None, url, code_for_message(code_text) or 0, code_text or "Empty <code>.")
