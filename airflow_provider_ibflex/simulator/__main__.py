"""``python -m airflow_provider_ibflex.simulator``: serve the Flex simulator until interrupted.

Prints its base URL, the demo token and query ids, and the connection to use; ``--ready-file`` also
writes them as JSON for scripts.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from airflow_provider_ibflex.simulator import DEMO_TOKEN, FlexSimulator, SimulatorConfig, demo_config


def main(argv: list[str] | None = None) -> int:
    """Run the simulator from the command line.

    :param argv: the arguments (``sys.argv[1:]`` by default).
    """
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_ibflex.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument(
        "--config", type=Path, help="JSON configuration: tokens, queries, rate_limit, time_scale"
    )
    parser.add_argument("--no-rate-limit", action="store_true", help="do not enforce 1 request/s, 10/min")
    parser.add_argument("--time-scale", type=float, help="divide generation times by this factor")
    parser.add_argument("--compress", action="store_true", help="gzip every answer a client accepts gzipped")
    parser.add_argument(
        "--ready-file", type=Path, help="write the base URL, token and query ids here as JSON"
    )
    args = parser.parse_args(argv)

    config = SimulatorConfig.from_json(json.loads(args.config.read_text())) if args.config else demo_config()
    if args.no_rate_limit:
        config.rate_limit = None
    if args.time_scale:
        config.time_scale = args.time_scale
    if args.compress:
        config.compress = True
    simulator = FlexSimulator(config, port=args.port).start()
    token = DEMO_TOKEN if DEMO_TOKEN in config.tokens else next(iter(config.tokens), "")
    info = {
        "base_url": simulator.base_url,
        "token": token,
        "query_ids": sorted(config.queries),
        "connection": json.loads(simulator.connection_uri_json(token)),
    }
    print(f"Flex Web Service simulator on {simulator.base_url}")
    print(f"  token:     {token}")
    for query_id, spec in sorted(config.queries.items()):
        print(f"  query id:  {query_id}  ({spec.format}, {spec.size} bytes, {spec.name})")
    print(f"  connection: export AIRFLOW_CONN_IBFLEX_DEFAULT='{simulator.connection_uri_json(token)}'")
    sys.stdout.flush()
    if args.ready_file:
        args.ready_file.write_text(json.dumps(info))

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    simulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
