"""IBFlexSendRequestOperator: ask the Flex Web Service to generate a statement (SendRequest)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator, Context

from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
from airflow_provider_ibflex.protocol import FlexInputError, validate_query_id

STATEMENT_URL_KEY = "statement_url"


class IBFlexSendRequestOperator(BaseOperator):
    """Call SendRequest for a Flex Query and return its reference code.

    The reference code is the task's return value (XCom ``return_value``, a string); the GetStatement
    URL to use goes to XCom under ``statement_url``. Fatal service errors fail the task without
    retries; throttling and transient errors are waited out inside the Hook's bounded policy.

    :param query_id: the Flex Query id (templated).
    :param ibflex_conn_id: the ``ibflex`` connection.
    :param from_date: optional first day overriding the query's period, a date or ``yyyymmdd``
        (templated, e.g. ``{{ data_interval_start | ds_nodash }}``).
    :param to_date: optional last day, with ``from_date``; at most 365 days after it (templated).
    """

    template_fields: Sequence[str] = ("query_id", "from_date", "to_date")
    ui_color = "#d81f26"

    def __init__(
        self,
        *,
        query_id: str | int,
        ibflex_conn_id: str = IBFlexHook.default_conn_name,
        from_date: str | datetime.date | None = None,
        to_date: str | datetime.date | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.query_id = query_id
        self.ibflex_conn_id = ibflex_conn_id
        self.from_date = from_date
        self.to_date = to_date
        self._hook: IBFlexHook | None = None

    def execute(self, context: Context) -> str:
        try:
            validate_query_id(self.query_id)
            hook = self._hook = IBFlexHook(self.ibflex_conn_id)
            reference = hook.send_request(self.query_id, from_date=self.from_date, to_date=self.to_date)
        except FlexInputError as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None
        context["ti"].xcom_push(key=STATEMENT_URL_KEY, value=reference.url)
        return reference.reference_code

    def on_kill(self) -> None:
        """Killed mid-request: give the token's turn back at once (it would lapse by itself)."""
        if self._hook is not None:
            self._hook.on_kill()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the Flex query this task asked for (see ``lineage``).

        :param task_instance: the finished task instance.
        """
        from airflow_provider_ibflex.lineage import operator_lineage, query_dataset

        if self._hook is None:
            return None
        return operator_lineage([query_dataset(self._hook.settings.endpoints.host, str(self.query_id))], [])
