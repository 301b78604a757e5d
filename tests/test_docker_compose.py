"""docker-compose.yml and the Dockerfile name only commands and settings that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url

from subscription_service.settings import SubscriptionSettings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, type[BaseSettings]] = {"SUBSCRIPTIONS_": SubscriptionSettings}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_file_parses_and_waits_for_a_healthy_postgres() -> None:
    services = _compose()["services"]
    assert "test" in services["postgres"]["healthcheck"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, name
            assert condition == {"condition": "service_healthy"}


def test_compose_commands_are_runnable_modules() -> None:
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if command is None:
            continue
        assert command[:2] == ["python", "-m"], name
        module = command[2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, name


def test_compose_environment_names_real_settings_with_valid_values() -> None:
    for name, service in _compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            prefix = next((p for p in SETTINGS if key.startswith(p)), None)
            if prefix is None:
                continue
            settings = SETTINGS[prefix]
            field = key.removeprefix(prefix).lower()
            assert field in settings.model_fields, f"{name}: {key} is not a setting"
            if field == "database_url":
                url = make_url(value)
                assert url.drivername == "postgresql+psycopg"
                assert url.host in _compose()["services"]


def test_dockerfile_copies_only_paths_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
