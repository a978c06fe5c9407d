"""The converter's one error: input that is not a convertible Flex statement, said with what to do."""

from __future__ import annotations

from airflow_provider_ibflex.protocol.errors import FlexError


class FlexTablesError(FlexError, ValueError):
    """The statement cannot be converted without losing something; nothing was written."""
