"""Registration: Airflow discovers the provider, its hook and the ibflex connection form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

from airflow_provider_ibflex import get_provider_info


def test_entry_point_points_at_get_provider_info() -> None:
    found = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_ibflex")
    ]
    assert len(found) == 1 and found[0].load() is get_provider_info


def test_provider_info_declares_the_connection_form() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-ibflex"
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "ibflex"
    assert conn["hook-class-name"] == "airflow_provider_ibflex.hooks.ibflex.IBFlexHook"
    behaviour = conn["ui-field-behaviour"]
    assert set(behaviour["hidden-fields"]) == {"login", "port", "schema"}
    assert behaviour["relabeling"]["password"] == "Flex Web Service token"
    assert behaviour["placeholders"]["host"].endswith("/AccountManagement/FlexWebService")
    assert conn["conn-fields"]["version"]["schema"]["default"] == 3
    assert "user_agent" in conn["conn-fields"]


def test_providers_manager_sees_provider_and_hook() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert "airflow-provider-ibflex" in ProvidersManager().providers
    # Hooks are the task runtime's to resolve (ProvidersManager.hooks is deprecated since 3.2).
    hook = ProvidersManagerTaskRuntime().hooks["ibflex"]
    assert hook is not None and hook.hook_class_name.endswith("IBFlexHook")
    assert hook.hook_name == "Interactive Brokers Flex Web Service"


def airflow_cli(*args: str) -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "airflow")
    return subprocess.run([exe, *args], check=True, capture_output=True, text=True, timeout=120).stdout


def test_airflow_cli_lists_provider_and_hook() -> None:
    provider = json.loads(airflow_cli("providers", "get", "airflow-provider-ibflex", "-o", "json"))
    assert provider == [{"Provider": "airflow-provider-ibflex", "Version": "0.1.0"}]
    hooks = json.loads(airflow_cli("providers", "hooks", "-o", "json"))
    (row,) = [row for row in hooks if row.get("connection_type") == "ibflex"]
    assert row["class"] == "airflow_provider_ibflex.hooks.ibflex.IBFlexHook"
    assert row["hook_name"] == "Interactive Brokers Flex Web Service"
