"""docker-compose.yml and the Dockerfile name only commands, settings and paths that exist.

No Docker engine is needed: the file is read as YAML and each part is checked against the
code it names (modules, settings classes, the init SQL, the tokens the tokens step writes).
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url
from yarl import URL

from console.settings import ConsoleSettings
from dispatcher_service.settings import DispatcherSettings
from service_common.dev_tokens import ensure_dev_tokens
from subscription_service.server import create_server
from subscription_service.settings import SubscriptionSettings
from webhook_receiver.demo import DemoReceiverSettings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, type[BaseSettings]] = {
    "SUBSCRIPTIONS_": SubscriptionSettings,
    "DISPATCHER_": DispatcherSettings,
    "DEMO_RECEIVER_": DemoReceiverSettings,
    "CONSOLE_": ConsoleSettings,
}
# Steps that run once and exit; the others serve until stopped.
ONE_SHOT = {"tokens", "migrate"}
# Modules whose `--help` only prints usage (the services themselves would start serving).
HELP_ONLY = {"subscription_service.migrate", "dispatcher_service.migrate", "webhook_receiver.demo"}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _environment(name: str) -> dict[str, str]:
    environment: dict[str, str] = _services()[name].get("environment", {})
    return environment


def _settings_env(prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(service, its variables of `prefix`) for every service that sets any."""
    for name in _services():
        values = {k: v for k, v in _environment(name).items() if k.startswith(prefix)}
        if values:
            yield name, values


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def _modules(command: list[str] | str) -> list[list[str]]:
    """Every `python -m MODULE ARGS...` in a command, `sh -c "a && b"` included."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] == ["sh", "-c"]:
        steps = [shlex.split(step) for step in re.split(r"&&|;", words[2])]
    else:
        steps = [words]
    found = []
    for step in steps:
        assert step[:2] == ["python", "-m"], f"not a python -m command: {step}"
        found.append(step[2:])
    return found


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume of a service (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts.append((source, target))
    return mounts


def test_compose_file_parses_and_postgres_has_a_health_check() -> None:
    services = _services()
    assert {"postgres", "migrate", "subscription-service", "dispatcher", "demo-receiver"} <= set(
        services
    )
    check = services["postgres"]["healthcheck"]["test"]
    assert check[0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in " ".join(check)
    # Over TCP: while the init SQL runs the server listens on its socket only, so a healthy
    # postgres has both databases.
    assert check[check.index("-h") + 1] == "127.0.0.1"


def test_every_dependency_is_a_real_service_with_a_sensible_condition() -> None:
    services = _services()
    for name, service in services.items():
        for dependency, wait in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = wait["condition"]
            if dependency == "postgres":
                assert condition == "service_healthy", name
            elif dependency in ONE_SHOT:
                assert condition == "service_completed_successfully", name
            else:
                assert condition in ("service_healthy", "service_started"), name
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", dependency
    # What migrates, and whatever skips migrating at start waits for it.
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in services:
        for key, value in _environment(name).items():
            if key.endswith("_MIGRATE_ON_START") and value == "false":
                depends = services[name]["depends_on"]["migrate"]
                assert depends["condition"] == "service_completed_successfully", name


def test_compose_commands_are_runnable_modules() -> None:
    helps = set()
    for name, service in _services().items():
        if "command" not in service:
            assert "image" in service, name
            assert "build" not in service, name
            continue
        for module, *_ in _modules(service["command"]):
            spec = importlib.util.find_spec(module)
            assert spec is not None, f"{name}: no module {module}"
            if spec.submodule_search_locations is not None:  # a package runs its __main__
                assert importlib.util.find_spec(f"{module}.__main__") is not None, name
            if module in HELP_ONLY:
                helps.add(module)
    assert helps == HELP_ONLY

    async def usage(module: str) -> tuple[int | None, bytes]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--help",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        return process.returncode, output

    async def all_usages() -> list[tuple[int | None, bytes]]:
        return await asyncio.gather(*(usage(module) for module in sorted(helps)))

    for returncode, output in asyncio.run(all_usages()):
        assert returncode == 0, output
        assert b"usage:" in output


def test_compose_environment_names_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = set()
    for name in _services():
        for key in _environment(name):
            if key.startswith(("SUBSCRIPTIONS", "DISPATCHER", "DEMO_RECEIVER", "CONSOLE")):
                assert any(key.startswith(p) for p in SETTINGS), f"{name}: {key}"
    for prefix, settings_class in SETTINGS.items():
        for name, values in _settings_env(prefix):
            for key in values:
                field = key.removeprefix(prefix).lower()
                assert field in settings_class.model_fields, f"{name}: {key} is not a setting"
            # Read from the environment as the service reads it (booleans, CIDR lists...).
            for key in list(os.environ):
                if key.startswith(prefix):
                    monkeypatch.delenv(key)
            for key, value in values.items():
                monkeypatch.setenv(key, value)
            settings = settings_class()
            for key, value in values.items():
                field = key.removeprefix(prefix).lower()
                if field == "migrate_on_start":
                    assert getattr(settings, field) is (value == "true"), f"{name}: {key}"
            checked.add(prefix)
    assert checked == set(SETTINGS)


def test_services_listen_on_every_interface_and_publish_on_loopback_only() -> None:
    for name, service in _services().items():
        listening = {
            _port(value)
            for key, value in _environment(name).items()
            if key.endswith("_ADDR") and value.startswith("0.0.0.0:")
        }
        for mapping in service.get("ports", []):
            host, host_port, container_port = str(mapping).split(":")
            assert host == "127.0.0.1", f"{name}: {mapping} is published beyond loopback"
            assert int(host_port) == int(container_port), name
            assert int(container_port) in listening, f"{name}: nothing listens on {mapping}"
    assert "ports" not in _services()["postgres"]


def test_database_urls_point_at_the_databases_postgres_creates() -> None:
    postgres = _environment("postgres")
    init_sql = ROOT / "deploy/postgres/init.sql"
    created = set(re.findall(r"CREATE DATABASE (\w+)", init_sql.read_text(), flags=re.I))
    databases = {postgres["POSTGRES_DB"], *created}
    assert ("./deploy/postgres/init.sql", "/docker-entrypoint-initdb.d/10-databases.sql") in (
        _mounts(_services()["postgres"])
    )
    by_prefix: dict[str, set[str]] = {}
    for name in _services():
        for key, value in _environment(name).items():
            if not key.endswith("_DATABASE_URL"):
                continue
            url = make_url(value)
            assert url.drivername == "postgresql+psycopg", f"{name}: {key}"
            assert (url.host, url.port) == ("postgres", 5432), f"{name}: {key}"
            assert url.username == postgres["POSTGRES_USER"], f"{name}: {key}"
            assert url.password == postgres["POSTGRES_PASSWORD"], f"{name}: {key}"
            assert url.database in databases, f"{name}: {key}"
            by_prefix.setdefault(key, set()).add(value)
    # The migrate step migrates exactly the databases the services use, one each.
    assert set(by_prefix) == {"SUBSCRIPTIONS_DATABASE_URL", "DISPATCHER_DATABASE_URL"}
    assert all(len(urls) == 1 for urls in by_prefix.values()), by_prefix
    assert by_prefix["SUBSCRIPTIONS_DATABASE_URL"] != by_prefix["DISPATCHER_DATABASE_URL"]


def test_mounted_files_come_from_the_repo_or_from_a_step_that_writes_them(
    tmp_path: Path,
) -> None:
    compose = _compose()
    named = set(compose.get("volumes", {}))
    written_by: dict[str, str] = {}
    for name, service in _services().items():
        for source, _target in _mounts(service):
            if source.startswith(("./", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    # Files that settings name live in a volume the service mounts; the tokens volume
    # holds what `python -m service_common.dev_tokens DIR` writes.
    tokens = _services()["tokens"]
    ((module, directory),) = _modules(tokens["command"])
    assert module == "service_common.dev_tokens"
    assert ("tokens", directory) in _mounts(tokens)
    ensure_dev_tokens(tmp_path)
    for name, service in _services().items():
        targets = {target: source for source, target in _mounts(service)}
        for key, value in _environment(name).items():
            if not key.endswith(("_FILE", "_DIR")):
                continue
            path = PurePosixPath(value)
            mounted = [t for t in targets if path == PurePosixPath(t) or path.is_relative_to(t)]
            assert mounted, f"{name}: {key}={value} is in no volume"
            if targets[mounted[0]] == "tokens":
                assert path.parent == PurePosixPath(directory), f"{name}: {key}"
                assert (tmp_path / path.name).is_file(), f"{name}: dev_tokens writes no {value}"
                written_by[key] = name
    assert "DISPATCHER_SUBSCRIPTIONS_TOKEN_FILE" in written_by
    # The console writes its cookie key into a volume of its own, kept across restarts.
    console = {target: source for source, target in _mounts(_services()["console"])}
    key_file = PurePosixPath(_environment("console")["CONSOLE_SESSION_KEY_FILE"])
    assert console.get(str(key_file.parent)) in named, "the console's key is in no volume"


def test_addresses_between_services_name_the_right_service_and_port() -> None:
    subscriptions = _environment("subscription-service")
    dispatcher = _environment("dispatcher")
    demo = _environment("demo-receiver")
    host, _, port = dispatcher["DISPATCHER_SUBSCRIPTIONS_ADDR"].rpartition(":")
    assert (host, int(port)) == (
        "subscription-service",
        _port(subscriptions["SUBSCRIPTIONS_GRPC_ADDR"]),
    )
    dispatcher_url = URL(demo["DEMO_RECEIVER_DISPATCHER_URL"])
    assert dispatcher_url.host == "dispatcher"
    assert dispatcher_url.port == _port(dispatcher["DISPATCHER_HTTP_ADDR"])
    # The dispatcher may deliver to the demo receiver: the project network is allowed.
    subnets = [
        ipaddress.ip_network(entry["subnet"])
        for entry in _compose()["networks"]["default"]["ipam"]["config"]
    ]
    allowed = DispatcherSettings(
        allowed_target_networks=dispatcher["DISPATCHER_ALLOWED_TARGET_NETWORKS"]
    ).allowed_target_networks
    for subnet in subnets:
        assert any(subnet.subnet_of(network) for network in allowed), subnet  # type: ignore[arg-type]
    # The console calls both services' gRPC ports by their names.
    console = _environment("console")
    for key, service, grpc_addr in (
        (
            "CONSOLE_SUBSCRIPTIONS_ADDR",
            "subscription-service",
            subscriptions["SUBSCRIPTIONS_GRPC_ADDR"],
        ),
        ("CONSOLE_DISPATCHER_ADDR", "dispatcher", dispatcher["DISPATCHER_GRPC_ADDR"]),
    ):
        host, _, port = console[key].rpartition(":")
        assert (host, int(port)) == (service, _port(grpc_addr)), key


async def test_the_grpc_health_check_is_a_command_that_passes_against_a_service(
    tmp_path: Path,
) -> None:
    services = _services()
    commands = {}
    for name in ("subscription-service", "dispatcher"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        prefix = "SUBSCRIPTIONS_" if name == "subscription-service" else "DISPATCHER_"
        assert int(test[4]) == _port(_environment(name)[f"{prefix}GRPC_ADDR"]), name
        commands[name] = test[1:4]
    for name, prefix in (("demo-receiver", "DEMO_RECEIVER_ADDR"), ("console", "CONSOLE_HTTP_ADDR")):
        check = services[name]["healthcheck"]["test"]
        compile(check[3], "healthcheck", "exec")
        assert f":{_port(_environment(name)[prefix])}/healthz" in check[3], name

    running = await create_server(
        SubscriptionSettings(
            grpc_addr="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'health.db'}"
        )
    )
    try:
        for name, command in commands.items():
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *command[1:],
                str(running.port),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, (name, output)
    finally:
        await running.stop(0)


def test_dockerfile_copies_only_existing_paths_and_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set()
    for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
            copied.add(path)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {*wheel["packages"], *wheel.get("force-include", {}), project["project"]["readme"]}
    assert needed <= copied, needed - copied
    # The directories the named volumes mount on belong to the user the services run as.
    volume_dirs = {
        target
        for service in _services().values()
        for source, target in _mounts(service)
        if source in {"tokens", "signing-keys", "console-session"}
    }
    for target in volume_dirs:
        assert target in dockerfile, target
    assert re.search(r"^USER nobody$", dockerfile, flags=re.MULTILINE)
