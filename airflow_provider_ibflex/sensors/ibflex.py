"""IBFlexStatementSensor: wait for a Flex statement and stream it into object storage.

Each poke is one GetStatement: while the statement is generating the service answers 1019; once it
is ready the same response is the statement, streamed to the destination in that one download.
Deferrable mode pokes once on the worker, then hands the waiting to ``IBFlexStatementTrigger`` and
downloads on the worker when the trigger says the statement is ready, or pokes again when the
trigger hands it the token's turn. Every request waits for the token's shared budget; waiting is
never a failed attempt, only the sensor's timeout bounds it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    BaseSensorOperator,
    Context,
    ObjectStoragePath,
    PokeReturnValue,
    conf,
)

from airflow_provider_ibflex.exceptions import IBFlexFatalError, IBFlexTransientError
from airflow_provider_ibflex.hooks.ibflex import IBFlexHook, StatementResult
from airflow_provider_ibflex.protocol import FlexInputError, validate_reference_code
from airflow_provider_ibflex.storage import resolve_destination
from airflow_provider_ibflex.triggers.ibflex import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_MAX_POKE_INTERVAL,
    IBFlexStatementTrigger,
)

# Airflow's own deferral timeout is set past the trigger's deadline, so the trigger's timeout event
# (which honours soft_fail here) normally comes first.
_DEFERRAL_GRACE = timedelta(minutes=2)
# A worker waits this long at most for its token's turn (shared with every other task using the
# token); when the turn is further away, a poke reports "not ready" and a deferrable sensor defers.
WORKER_BUDGET_WAIT = 15.0


class IBFlexStatementSensor(BaseSensorOperator):
    """Wait until a Flex statement is generated, then stream it atomically to ``destination``.

    Returns (XCom ``return_value``) the metadata ``{"uri", "size", "sha256", "format",
    "reference_code"}``, never the statement; outlet Assets get the same metadata as their event's
    extra. Never calls SendRequest: a reference code the service no longer knows (1017) fails with a
    message saying to re-run the upstream SendRequest task.

    :param reference_code: the code from ``IBFlexSendRequestOperator`` (templated; its ``.output``
        works too).
    :param destination: where the statement goes: a URL (``file://``, ``s3://``, ``gs://``, ...) or an
        ObjectStoragePath, naming the file (templated).
    :param ibflex_conn_id: the ``ibflex`` connection.
    :param destination_conn_id: the storage connection (e.g. ``aws_default``), if the store needs one.
    :param url: the GetStatement URL from the operator's ``statement_url`` XCom (templated); used only
        if it is on a trusted host.
    :param query_id: the Flex Query the statement comes from (templated): only named in the task's
        OpenLineage events, as the statement's input.
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param backoff_factor: deferrable mode: each wait is the previous one times this factor ...
    :param max_poke_interval: ... up to this many seconds.
    """

    template_fields: Sequence[str] = ("reference_code", "destination", "url", "query_id")
    ui_color = "#d81f26"

    def __init__(
        self,
        *,
        reference_code: str | Any,
        destination: str | ObjectStoragePath,
        ibflex_conn_id: str = IBFlexHook.default_conn_name,
        destination_conn_id: str | None = None,
        url: str | None = None,
        query_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
        max_poke_interval: float = DEFAULT_MAX_POKE_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reference_code = reference_code
        self.destination = destination
        self.ibflex_conn_id = ibflex_conn_id
        self.destination_conn_id = destination_conn_id
        self.url = url
        self.query_id = query_id
        self.deferrable = deferrable
        self.backoff_factor = backoff_factor
        self.max_poke_interval = max_poke_interval
        self._hook: IBFlexHook | None = None
        self._metadata: dict[str, Any] | None = None

    def on_kill(self) -> None:
        """Killed mid-request: give the token's turn back at once (it would lapse by itself)."""
        if self._hook is not None:
            self._hook.on_kill()

    # -- one GetStatement ------------------------------------------------------------------------

    def _checked_destination(self) -> ObjectStoragePath:
        """Validate the inputs before any request; bad input fails the task without retries."""
        try:
            validate_reference_code(self.reference_code)
            return resolve_destination(self.destination, self.destination_conn_id)
        except FlexInputError as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None

    def _expired_reference(self) -> AirflowFailException:
        return AirflowFailException(
            f"Reference code {self.reference_code} is no longer valid (1017): the service has forgotten "
            "it or it expired. Re-run the upstream SendRequest task (clear it together with this "
            "sensor) to get a new reference code."
        )

    def _download(self, as_poll: bool = False, reservation: str | None = None) -> StatementResult:
        """One GetStatement; the statement, if ready, lands at the destination in the same download.

        :param as_poll: the statement is probably not ready: poll only with a turn to spare.
        :param reservation: a turn the trigger reserved for this download.
        """
        destination = self._checked_destination()
        hook = self._hook = IBFlexHook(self.ibflex_conn_id)
        try:
            return hook.download_statement(
                str(self.reference_code).strip(),
                destination,
                url=self.url or None,
                budget_wait=WORKER_BUDGET_WAIT,
                as_poll=as_poll,
                reservation=reservation,
            )
        except IBFlexFatalError as exc:
            if exc.code == 1017:
                raise self._expired_reference() from None
            raise
        except IBFlexTransientError as exc:
            # Transient trouble is not fatal: the sensor's timeout bounds how long it is tolerated.
            self.log.warning("GetStatement failed transiently, will poke again: %s", exc)
            return StatementResult("pending", str(exc))
        finally:
            hook.close()

    def _landed(self, context: Context, metadata: dict[str, Any]) -> dict[str, Any]:
        from airflow.providers.common.compat.sdk import Asset

        self._metadata = metadata
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update(metadata)
        return metadata

    # -- poke / reschedule modes -----------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue | bool:
        result = self._download()
        if result.landed and result.metadata is not None:
            return PokeReturnValue(is_done=True, xcom_value=self._landed(context, result.metadata))
        self.log.info("Statement %s not ready yet: %s", self.reference_code, result.message)
        return False

    # -- deferrable mode -------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        deadline = time.time() + self.timeout
        # A first poke right after SendRequest rarely finds the statement ready: it yields to other
        # tasks' SendRequests and to downloads when the token's budget is tight, and defers instead.
        result = self._download(as_poll=True)
        if result.landed and result.metadata is not None:
            return self._landed(context, result.metadata)
        self.log.info(
            "Statement %s not ready (%s); deferring to the triggerer", self.reference_code, result.message
        )
        self._defer(deadline, self.poke_interval)
        return None

    def _defer(self, deadline: float, interval: float, handoff: bool = False) -> None:
        trigger = IBFlexStatementTrigger(
            reference_code=str(self.reference_code).strip(),
            deadline=deadline,
            ibflex_conn_id=self.ibflex_conn_id,
            url=self.url or None,
            poke_interval=interval,
            backoff_factor=self.backoff_factor,
            max_poke_interval=max(self.max_poke_interval, self.poke_interval),
            # The worker has just polled (or found no turn): the trigger's first poll waits one interval.
            initial_wait=0.0 if handoff else interval,
            handoff=handoff,
        )
        remaining = timedelta(seconds=max(deadline - time.time(), 0))
        self.defer(trigger=trigger, method_name="execute_complete", timeout=remaining + _DEFERRAL_GRACE)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Act on the trigger's event: download when ready (or handed a turn), fail on errors, time out
        at the deadline.

        :param context: the task context.
        :param event: ``{"status", "message", "reference_code", "deadline", "interval", ...}``.
        """
        status = event.get("status")
        if status in ("ready", "poll"):
            result = self._download(reservation=event.get("reservation"))
            if result.landed and result.metadata is not None:
                return self._landed(context, result.metadata)
            # Still generating, or no turn for the token right now: wait again, same deadline. A
            # statement seen ready waits only for a turn, without polling again.
            self.log.info(
                "Statement %s not landed yet (%s); deferring again", self.reference_code, result.message
            )
            deadline = float(event.get("deadline") or time.time() + self.timeout)
            interval = float(event.get("interval") or self.poke_interval)
            self._defer(deadline, interval, handoff=status == "ready" and result.state == "busy")
            return None
        if status == "timeout":
            raise AirflowSensorTimeout(f"{self.task_id}: {event.get('message')}")
        if event.get("code") == 1017:
            raise self._expired_reference()
        if event.get("store") or event.get("unexpected"):
            # Not the service's verdict: the budget's store was down, or the trigger met something
            # unexpected. Worth the task's retries (and soft_fail skips it).
            raise AirflowException(f"{self.task_id}: {event.get('message')}")
        raise AirflowFailException(f"{self.task_id}: {event.get('message')}")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the landed statement, with its size and sha256, and the Flex query it comes
        from when ``query_id`` is given (see ``lineage``).

        :param task_instance: the finished task instance.
        """
        from airflow_provider_ibflex.lineage import operator_lineage, query_dataset, statement_dataset

        if self._metadata is None:
            return None
        inputs = []
        if self.query_id and self._hook is not None:
            inputs.append(query_dataset(self._hook.settings.endpoints.host, str(self.query_id)))
        return operator_lineage(inputs, [statement_dataset(self._metadata, output=True)])
