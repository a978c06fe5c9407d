"""Endpoints and request parameters: URLs from a connection's host, the trusted-URL rule for the
``<Url>`` the service returns, and validated parameters of both calls."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_provider_ibflex.protocol.errors import FlexInputError
from airflow_provider_ibflex.protocol.service import (
    DEFAULT_BASE_URL,
    DEFAULT_VERSION,
    MAX_DATE_SPAN_DAYS,
    SUPPORTED_VERSIONS,
    TRUSTED_DOMAIN,
    is_digits,
)


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


def _digits(value: object, requirement: str) -> str:
    text = str(value).strip() if value is not None else ""
    if not is_digits(text):
        raise FlexInputError(f"{requirement}, got {value!r}")
    return text


def validate_query_id(query_id: object) -> str:
    """Return the query id as a string of digits, or raise naming the field.

    :param query_id: the Flex Query id (the number shown in Account Management).
    """
    return _digits(query_id, "query_id must be the numeric Flex Query id shown in Account Management")


def validate_reference_code(reference_code: object) -> str:
    """Return the reference code as a string of digits, or raise naming the field.

    :param reference_code: the code SendRequest returned.
    """
    return _digits(reference_code, "reference_code must be the numeric code returned by SendRequest")


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
