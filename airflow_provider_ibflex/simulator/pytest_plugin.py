"""The simulator as a pytest fixture.

Enable it with ``pytest_plugins = ["airflow_provider_ibflex.simulator.pytest_plugin"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig


@pytest.fixture
def flex_simulator() -> Iterator[FlexSimulator]:
    """A running simulator with no tokens, queries or rate limit; tests add what they need."""
    with FlexSimulator(SimulatorConfig(rate_limit=None)) as simulator:
        yield simulator
