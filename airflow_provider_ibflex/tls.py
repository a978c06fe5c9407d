"""TLS and proxies as both transports see them: one CA bundle, one message for an untrusted certificate.

Behind a corporate proxy that re-signs TLS, or with a private CA, the bundle to trust comes from the
environment: ``REQUESTS_CA_BUNDLE`` (requests' name) or ``SSL_CERT_FILE`` (OpenSSL's and httpx's).
Either works for the Hook and the trigger alike. Proxies come from ``HTTPS_PROXY``/``NO_PROXY``, which
both HTTP clients read themselves.
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import urlsplit

from airflow_provider_ibflex.protocol import Outcome

CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def ca_bundle() -> str | None:
    """The CA bundle the environment names, if any (``REQUESTS_CA_BUNDLE`` first)."""
    for name in CA_BUNDLE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def requests_verify() -> str | bool:
    """``verify`` for a ``requests.Session``: the environment's bundle, else the default one."""
    return ca_bundle() or True


def httpx_verify() -> ssl.SSLContext | bool:
    """``verify`` for an ``httpx`` client: a context with the environment's bundle, else the default."""
    bundle = ca_bundle()
    return ssl.create_default_context(cafile=bundle) if bundle else True


def is_certificate_error(exc: BaseException) -> bool:
    """Whether an exception (or what caused it) is a failed certificate verification.

    :param exc: an exception raised by either HTTP client.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def certificate_outcome(url: str) -> Outcome:
    """What an untrusted certificate means: retrying cannot help, the configuration must change.

    :param url: the URL whose host presented the certificate.
    """
    host = urlsplit(url).hostname or url
    return Outcome(
        "fatal",
        f"the TLS certificate of {host} is not trusted",
        hint="If a proxy or a private CA signs this traffic, point REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) "
        "at a PEM bundle with its CA certificate, on every worker and triggerer.",
    )
