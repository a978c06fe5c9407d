"""Exceptions the provider raises, in Airflow's vocabulary: fatal ones fail a task without retries."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_ibflex.protocol import Outcome, describe


class IBFlexFatalError(AirflowFailException):
    """The service answered with an error that retrying cannot fix; the task fails without retries.

    :param outcome: the classified response (code, message and hint; never the token).
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(describe(outcome))
        self.code = outcome.code
        self.hint = outcome.hint
        self.outcome = outcome


class IBFlexTransientError(AirflowException):
    """The service or the network kept failing transiently after the bounded retries; Airflow may retry.

    :param message: what failed, token-free.
    """
