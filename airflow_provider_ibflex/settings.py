"""Turn an Airflow ``ibflex`` connection into validated settings, shared by the Hook and the trigger.

``settings_from_connection`` is pure (it takes the connection's fields); ``load_settings`` loads the
connection, registers its token with Airflow's secrets masker and validates it: the Hook calls it on
a worker, the trigger in a thread beside its event loop.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_ibflex import __version__
from airflow_provider_ibflex.protocol import (
    DEFAULT_VERSION,
    MAX_REQUESTS_PER_MINUTE,
    MIN_INTERVAL_SECONDS,
    Endpoints,
    FlexInputError,
    endpoints_for,
    validate_version,
)

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_THROTTLE_WAIT = 60.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_MAX = 30.0

# extra name -> (type, default, lower bound)
_NUMBER_EXTRAS: dict[str, tuple[type, float, float]] = {
    "connect_timeout": (float, DEFAULT_CONNECT_TIMEOUT, 0.001),
    "read_timeout": (float, DEFAULT_READ_TIMEOUT, 0.001),
    "throttle_wait": (float, DEFAULT_THROTTLE_WAIT, 0.0),
    "max_attempts": (int, DEFAULT_MAX_ATTEMPTS, 1),
    "backoff_max": (float, DEFAULT_BACKOFF_MAX, 0.0),
    "min_interval": (float, MIN_INTERVAL_SECONDS, 0.0),
    "max_requests_per_minute": (int, MAX_REQUESTS_PER_MINUTE, 0),
    "rate_window": (float, 60.0, 0.001),
}
KNOWN_EXTRAS = frozenset({"version", "user_agent", *_NUMBER_EXTRAS})


def default_user_agent() -> str:
    """``airflow-provider-ibflex/<version> Python/<x.y>``, as the service asks clients to identify."""
    return (
        f"airflow-provider-ibflex/{__version__} Python/{platform.python_version_tuple()[0]}."
        + (platform.python_version_tuple()[1])
    )


@dataclass(frozen=True)
class FlexSettings:
    """Everything a transport needs to talk to the service for one connection.

    :param conn_id: the Airflow connection id (for messages).
    :param token: the Flex Web Service token (a secret: never log this object's token).
    :param endpoints: SendRequest and GetStatement URLs.
    :param version: the service version, 2 or 3.
    :param user_agent: the User-Agent header.
    :param connect_timeout: seconds to establish a connection.
    :param read_timeout: seconds to wait for bytes on an open connection.
    :param throttle_wait: seconds to wait after a 1018 (at least a minute against the real service).
    :param max_attempts: attempts of one call on transient failures.
    :param backoff_max: cap of the exponential backoff between attempts, in seconds.
    :param min_interval: pacing: seconds between two requests with the same token.
    :param max_requests_per_minute: pacing: requests per minute with the same token (0: no limit).
    :param rate_window: pacing: the length of that minute in seconds (shorter only in compressed time).
    """

    conn_id: str
    token: str = field(repr=False)
    endpoints: Endpoints
    version: int = DEFAULT_VERSION
    user_agent: str = field(default_factory=default_user_agent)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    throttle_wait: float = DEFAULT_THROTTLE_WAIT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_max: float = DEFAULT_BACKOFF_MAX
    min_interval: float = MIN_INTERVAL_SECONDS
    max_requests_per_minute: int = MAX_REQUESTS_PER_MINUTE
    rate_window: float = 60.0


def _extra_value(extra: Mapping[str, Any], name: str) -> Any:
    # Airflow 2's form stored extras as "extra__<type>__<name>"; accept both spellings.
    if name in extra and extra[name] not in (None, ""):
        return extra[name]
    return extra.get(f"extra__ibflex__{name}")


def settings_from_connection(
    conn_id: str, password: str | None, host: str | None, extra: Mapping[str, Any] | None
) -> FlexSettings:
    """Validate an ``ibflex`` connection's fields into settings; errors name the connection.

    :param conn_id: the connection id.
    :param password: the Flex token.
    :param host: optional base URL (or full SendRequest URL) of the service.
    :param extra: the connection's extra fields.
    """
    extra = extra or {}
    token = (password or "").strip()
    if not token:
        raise FlexInputError(
            f"connection {conn_id!r} has no Flex token: put the token from Account Management "
            "(Reports > Settings > Flex Web Service) in the connection's password field"
        )
    try:
        endpoints = endpoints_for(host)
        raw_version = _extra_value(extra, "version")
        version = DEFAULT_VERSION if raw_version is None else validate_version(raw_version)
        numbers = {name: _number(extra, name, *spec) for name, spec in _NUMBER_EXTRAS.items()}
    except FlexInputError as exc:
        raise FlexInputError(f"connection {conn_id!r}: {exc}") from None
    user_agent = str(_extra_value(extra, "user_agent") or "").strip() or default_user_agent()
    return FlexSettings(conn_id, token, endpoints, version, user_agent, **numbers)


def load_settings(conn_id: str) -> FlexSettings:
    """Load an ``ibflex`` connection, mask its token in every log, and validate it (blocking).

    :param conn_id: the connection id.
    """
    from airflow.providers.common.compat.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if conn.password:
        _mask_secret()(conn.password)
    return settings_from_connection(conn_id, conn.password, conn.host, conn.extra_dejson)


def _mask_secret() -> Callable[[str], None]:
    try:
        from airflow.providers.common.compat.sdk import mask_secret
    except ImportError:
        # common-compat 1.20, the last release for Python 3.10, does not map mask_secret yet.
        try:
            from airflow.sdk.log import mask_secret
        except ImportError:  # Airflow 2
            from airflow.utils.log.secrets_masker import mask_secret  # type: ignore[no-redef]
    masker: Callable[[str], None] = mask_secret
    return masker


def _number(extra: Mapping[str, Any], name: str, kind: type, default: float, minimum: float) -> Any:
    raw = _extra_value(extra, name)
    if raw is None:
        return kind(default)
    try:
        value = kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
    except (TypeError, ValueError):
        raise FlexInputError(f"extra {name!r} must be a number, got {raw!r}") from None
    if value < minimum:
        raise FlexInputError(f"extra {name!r} must be at least {minimum}, got {raw!r}")
    return value
