"""``make demo``: the example DAG end to end against the simulator, in a throw-away Airflow home.

Sets up an Airflow home under ``.demo/`` (SQLite), starts the Flex simulator, runs
``ibflex_statement_to_storage`` with ``airflow dags test`` for two days in a row, stops the simulator
and prints where the last statement landed with its size and sha256, the tables it was turned into,
and the Delta table of trades both days were merged into (its rows and version).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from airflow_provider_ibflex.simulator.process import simulator_process

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / ".demo"
DAG_ID = "ibflex_statement_to_storage"
QUERY_ID = "100001"


def main() -> int:
    """Run the demo; return the process exit code."""
    shutil.rmtree(DEMO, ignore_errors=True)
    home = DEMO / "airflow"
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    print("Setting up an Airflow home in", home)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)

    days = [(datetime.date.today() - datetime.timedelta(days=back)).isoformat() for back in (2, 1)]
    with simulator_process(None, DEMO, env=env) as info:
        print(f"Flex simulator on {info['base_url']}")
        env["AIRFLOW_CONN_IBFLEX_DEFAULT"] = json.dumps(info["connection"])
        for day in days:
            print(f"Running {DAG_ID} for {day} with airflow dags test ...")
            result = subprocess.run(
                [airflow, "dags", "test", DAG_ID, day], env=env, capture_output=True, text=True
            )
            with (DEMO / "dags-test.log").open("a") as log:
                log.write(result.stdout + result.stderr)
            if result.returncode != 0:
                print(f"The DAG run failed; its output is in {DEMO / 'dags-test.log'}")
                return 1

    day = days[-1]
    base = home / "statements" / "ibflex"
    landed = base / day / f"{QUERY_ID}.xml"
    if not landed.exists():
        print(f"No statement landed; the output is in {DEMO / 'dags-test.log'}")
        return 1
    data_hash = hashlib.sha256()
    with landed.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            data_hash.update(chunk)
    print(f"\nStatement of {day} landed:")
    print(f"  uri:    file://{landed}")
    print(f"  size:   {landed.stat().st_size} bytes")
    print(f"  sha256: {data_hash.hexdigest()}")
    manifest_path = base / "tables" / "_manifests" / f"{day}-{QUERY_ID}.json"
    manifest = json.loads(manifest_path.read_text())
    print(f"\nAs tables ({manifest['format']}), manifest file://{manifest_path}:")
    for name, table in manifest["tables"].items():
        print(f"  {name:<34} {table['rows']:>6} rows  {table['uri']}")
    from deltalake import DeltaTable

    trades = DeltaTable(str(base / "delta" / "Trades" / "Trade"))
    print(f"\nDelta table of trades after {len(days)} days ({', '.join(days)}): {trades.table_uri}")
    print(f"  {trades.to_pyarrow_dataset().count_rows()} rows, version {trades.version()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
