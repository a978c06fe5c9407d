"""Behind a corporate proxy with a private CA: the simulator on https with a test CA (trustme), reached
through a real forward proxy on 127.0.0.1, by the Hook and the trigger alike."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_ibflex.exceptions import IBFlexFatalError
from airflow_provider_ibflex.hooks.ibflex import IBFlexHook
from airflow_provider_ibflex.simulator import FlexSimulator, SimulatorConfig
from airflow_provider_ibflex.triggers.ibflex import IBFlexStatementTrigger
from tests.conftest import FAST_EXTRAS, first_event, new_token, sha256_of


class ConnectProxy:
    """A forward proxy on 127.0.0.1 that tunnels ``CONNECT`` and records every request line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode("latin-1").strip()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.lines.append(line)
        method, target, _ = [*line.split(), "", "", ""][:3]
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


@pytest.fixture
def https_simulator(tmp_path: Path) -> Iterator[tuple[FlexSimulator, Path]]:
    """The simulator on https with a certificate from a private test CA; yields it and the CA's PEM."""
    import trustme

    authority = trustme.CA()
    server_pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    authority.cert_pem.write_to_path(str(ca_pem))
    config = SimulatorConfig(rate_limit=None)
    with FlexSimulator(config, ssl_certfile=str(server_pem), ssl_keyfile=str(server_pem)) as simulator:
        yield simulator, ca_pem


def test_hook_and_trigger_through_a_proxy_with_a_private_ca(
    https_simulator: tuple[FlexSimulator, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    simulator, ca_pem = https_simulator
    token = simulator.add_token(new_token())
    simulator.add_query("1", generation_polls=1)
    connection = {"conn_type": "ibflex", "password": token, "host": simulator.base_url, "extra": FAST_EXTRAS}
    monkeypatch.setenv("AIRFLOW_CONN_IBFLEX_TLS", json.dumps(connection))
    for name in (
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "no_proxy",
        "https_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "")

    def trigger(reference: str) -> dict[str, object]:
        return asyncio.run(
            first_event(IBFlexStatementTrigger(reference, time.time() + 20, "ibflex_tls", poke_interval=0.05))
        )

    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        # The private CA is not trusted yet: both transports stop at once, saying what to set.
        with pytest.raises(IBFlexFatalError, match="not trusted") as caught:
            IBFlexHook("ibflex_tls").send_request("1")
        assert "REQUESTS_CA_BUNDLE" in str(caught.value)
        event = trigger(simulator.state.issue_reference(token, "1"))
        assert event["status"] == "error" and "not trusted" in str(event["message"])
        assert simulator.requests() == [], "nothing reached the service over an untrusted connection"

        # Either variable makes both transports trust it.
        for name, other in (("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"), ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")):
            monkeypatch.delenv(other, raising=False)
            monkeypatch.setenv(name, str(ca_pem))
            hook = IBFlexHook("ibflex_tls")
            reference = hook.send_request("1")
            assert trigger(reference.reference_code)["status"] == "ready"
            destination = tmp_path / f"{name}.xml"
            result = hook.download_statement(reference.reference_code, str(destination))
            assert result.landed and sha256_of(destination) == simulator.statement("1").sha256()

    tunnels = [line for line in proxy.lines if line.startswith("CONNECT ")]
    assert len(tunnels) >= 6 and {line.split()[1] for line in tunnels} == {f"127.0.0.1:{simulator.port}"}
    # urllib3 (the Hook) asks in HTTP/1.0, httpx (the trigger) in HTTP/1.1: both went through the proxy.
    assert {line.split()[2] for line in tunnels} == {"HTTP/1.0", "HTTP/1.1"}, proxy.lines
    assert all(token not in line for line in proxy.lines)
