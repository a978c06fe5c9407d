"""A Flex Web Service simulator: a real HTTP server on 127.0.0.1 for demos, tests and benchmarks.

``FlexSimulator`` runs it in a background thread (``with FlexSimulator() as sim: ...``);
``python -m airflow_provider_ibflex.simulator`` runs it in the foreground and prints what to connect
with; ``airflow_provider_ibflex.simulator.pytest_plugin`` offers it as the ``flex_simulator`` fixture.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from airflow_provider_ibflex.simulator.app import (
    CURRENT_PREFIX,
    LEGACY_PREFIX,
    Fault,
    FlexSimulatorApp,
    QuerySpec,
    RequestRecord,
    SimulatorConfig,
    SimulatorState,
    TokenSpec,
    render_envelope,
)
from airflow_provider_ibflex.simulator.statements import GeneratedStatement, StatementShape

DEMO_TOKEN = "771122334455667788990011"  # noqa: S105 - the simulator's public demo token
DEMO_QUERIES = {
    "100001": QuerySpec(
        format="xml", size=64_000, generation_polls=2, name="Daily trades", content="full", accounts=2
    ),
    "100002": QuerySpec(format="csv", size=32_000, generation_polls=1, name="Daily trades (CSV)"),
    "100003": QuerySpec(format="xml", size=10_000_000, generation_seconds=3, name="Year of trades"),
}


def demo_config() -> SimulatorConfig:
    """The configuration the CLI and ``make demo`` use: one valid demo token and three queries."""
    return SimulatorConfig(tokens={DEMO_TOKEN: TokenSpec()}, queries=dict(DEMO_QUERIES))


class FlexSimulator:
    """Run the simulator on 127.0.0.1 in a background thread.

    :param config: tokens, queries and limits; the demo configuration by default.
    :param port: the port, 0 for any free one.
    :param host: the address to listen on.
    :param ssl_certfile: serve https with this certificate chain (PEM, with the key unless
        ``ssl_keyfile`` is given); plain http by default.
    :param ssl_keyfile: the certificate's private key (PEM).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.state = SimulatorState(config or demo_config())
        self.host = host
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        self.state.base_url = self.base_url
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The base URL a connection's ``host`` takes (``.../AccountManagement/FlexWebService``)."""
        scheme = "https" if self.ssl_certfile else "http"
        return f"{scheme}://{self.host}:{self.port}{CURRENT_PREFIX.rstrip('/')}"

    @property
    def legacy_send_url(self) -> str:
        """The legacy servlet SendRequest URL on this simulator."""
        return self.base_url.split("/AccountManagement")[0] + f"{LEGACY_PREFIX}SendRequest"

    @property
    def config(self) -> SimulatorConfig:
        return self.state.config

    def start(self) -> FlexSimulator:
        """Start serving; returns once the server accepts connections."""
        config = uvicorn.Config(
            FlexSimulatorApp(self.state),
            log_level="critical",
            access_log=False,
            lifespan="on",
            backlog=4096,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=1,
            loop="asyncio",
            http="h11",
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="flex-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Flex simulator did not start")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        assert self._server is not None
        # uvicorn reports handler exceptions (the simulated resets) on this logger: keep them quiet.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> FlexSimulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- conveniences for tests and demos ----------------------------------------------------------

    def add_token(self, token: str, **spec: Any) -> str:
        """Register a token (``state``, ``ip``) and return it."""
        self.state.config.tokens[token] = TokenSpec(**spec)
        return token

    def add_query(self, query_id: str, **spec: Any) -> str:
        """Register a query (``format``, ``size``, ``generation_polls``, ...) and return its id."""
        self.state.config.queries[query_id] = QuerySpec(**spec)
        return query_id

    def add_fault(self, kind: str, **spec: Any) -> Fault:
        """Script a fault (see ``Fault``)."""
        return self.state.add_fault(Fault(kind, **spec))  # type: ignore[arg-type]

    def requests(self, call: str | None = None) -> list[RequestRecord]:
        """The request log, optionally only ``send`` or ``get`` calls."""
        return self.state.records(call)

    def statement(self, query_id: str) -> GeneratedStatement:
        """The statement a query generates (to compare sizes and digests)."""
        return GeneratedStatement(self.state.config.queries[query_id].shape())

    def connection_uri_json(self, token: str, **extra: Any) -> str:
        """The ``AIRFLOW_CONN_<ID>`` JSON for a connection to this simulator."""
        import json

        return json.dumps({"conn_type": "ibflex", "password": token, "host": self.base_url, "extra": extra})


__all__ = [
    "DEMO_QUERIES",
    "DEMO_TOKEN",
    "Fault",
    "FlexSimulator",
    "GeneratedStatement",
    "QuerySpec",
    "RequestRecord",
    "SimulatorConfig",
    "StatementShape",
    "TokenSpec",
    "demo_config",
    "render_envelope",
]
