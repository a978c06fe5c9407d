"""Apache Airflow provider for Interactive Brokers' Flex Web Service.

``get_provider_info`` registers the provider (entry point ``apache_airflow_provider``) and declares
the ``ibflex`` connection type with its form, so Airflow's UI shows it without importing the hook.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _number_field(label: str, description: str, default: float) -> dict[str, Any]:
    return {
        "label": label,
        "description": description,
        "schema": {"type": ["number", "null"], "default": default},
    }


def connection_type() -> dict[str, Any]:
    """The ``ibflex`` connection type: its hook, its name in the UI and its form (the ``conn-fields``
    Airflow 3.2 and later read without importing the hook; earlier versions ask the hook, which
    builds its form from the same fields)."""
    from airflow_provider_ibflex.protocol import DEFAULT_BASE_URL, DEFAULT_VERSION
    from airflow_provider_ibflex.settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT

    return {
        "hook-class-name": "airflow_provider_ibflex.hooks.ibflex.IBFlexHook",
        "hook-name": "Interactive Brokers Flex Web Service",
        "connection-type": "ibflex",
        "ui-field-behaviour": {
            "hidden-fields": ["login", "port", "schema"],
            "relabeling": {"password": "Flex Web Service token", "host": "Service base URL"},
            "placeholders": {
                "host": DEFAULT_BASE_URL,
                "password": "token from Account Management > Reports > Settings > Flex Web Service",
                "extra": '{"version": 3}',
            },
        },
        "conn-fields": {
            "version": {
                "label": "Flex Web Service version",
                "description": "3 (recommended) or 2.",
                "schema": {
                    "type": ["integer", "null"],
                    "default": DEFAULT_VERSION,
                    "enum": [3, 2, None],
                },
            },
            "user_agent": {
                "label": "User-Agent",
                "description": "Replaces the default airflow-provider-ibflex/<version> Python/<x.y>.",
                "schema": {"type": ["string", "null"]},
            },
            "connect_timeout": _number_field(
                "Connect timeout (s)", "Seconds to establish a connection.", DEFAULT_CONNECT_TIMEOUT
            ),
            "read_timeout": _number_field(
                "Read timeout (s)",
                "Seconds to wait for data on an open connection.",
                DEFAULT_READ_TIMEOUT,
            ),
        },
    }


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's ProvidersManager."""
    return {
        "package-name": "airflow-provider-ibflex",
        "name": "Interactive Brokers Flex",
        "description": "Request Interactive Brokers Flex Queries and stream statements into object storage.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Interactive Brokers Flex Web Service",
                "external-doc-url": "https://www.ibkrguides.com/clientportal/performanceandstatements/flex3.htm",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Interactive Brokers Flex Web Service",
                "python-modules": ["airflow_provider_ibflex.hooks.ibflex"],
            }
        ],
        "operators": [
            {
                "integration-name": "Interactive Brokers Flex Web Service",
                "python-modules": [
                    "airflow_provider_ibflex.operators.ibflex",
                    "airflow_provider_ibflex.operators.tables",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Interactive Brokers Flex Web Service",
                "python-modules": ["airflow_provider_ibflex.sensors.ibflex"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Interactive Brokers Flex Web Service",
                "python-modules": ["airflow_provider_ibflex.triggers.ibflex"],
            }
        ],
        "config": {
            "ibflex": {
                "description": "Where the per-token request budget of the Flex Web Service is kept. The "
                "service allows each token one request per second and ten per minute; every worker and "
                "triggerer that uses a token takes its turns from one shared budget.",
                "options": {
                    "rate_limit_conn_id": {
                        "description": "A 'redis' or 'postgres' connection: the budget is kept in Redis "
                        "or in a PostgreSQL table, shared by every process on every machine that reaches "
                        "it. Use it when workers or triggerers run on more than one machine "
                        "(CeleryExecutor, KubernetesExecutor). Empty: the file store below.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "redis_default",
                        "default": "",
                    },
                    "rate_limit_folder": {
                        "description": "The file store's folder, shared by every process on one machine "
                        "(LocalExecutor, or one machine running everything). Empty: "
                        "$AIRFLOW_HOME/ibflex/rate-limits.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/lib/airflow/ibflex-rate-limits",
                        "default": "",
                    },
                },
            }
        },
        "connection-types": [connection_type()],
    }
