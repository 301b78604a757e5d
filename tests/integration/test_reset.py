"""`make reset` (scripts/reset_local.sh) starts the walk-through over: it deletes the SQLite
databases under ./var/, keeps the tokens and signing keys, and refuses while a service runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATABASES = [
    f"{name}.db{suffix}"
    for name in ("subscriptions", "dispatcher")
    for suffix in ("", "-wal", "-shm")
]
KEPT = ["tokens.json", "dev-token", "platform-token", "signing-keys/key.pem"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _local_state(clone: Path) -> Path:
    var = clone / "var"
    (var / "signing-keys").mkdir(parents=True)
    for name in DATABASES + KEPT:
        (var / name).write_text("state")
    return var


def _reset(clone: Path, subscriptions_port: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "SUBSCRIPTIONS_GRPC_ADDR": f"127.0.0.1:{subscriptions_port}",
        "DISPATCHER_GRPC_ADDR": f"127.0.0.1:{_free_port()}",
    }
    return subprocess.run(
        [str(ROOT / "scripts" / "reset_local.sh")],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reset_deletes_the_local_databases_and_keeps_tokens_and_keys(tmp_path: Path) -> None:
    var = _local_state(tmp_path)
    ran = _reset(tmp_path, _free_port())
    assert ran.returncode == 0, ran.stderr
    assert sorted(str(p.relative_to(var)) for p in var.rglob("*") if p.is_file()) == sorted(KEPT)


def test_reset_refuses_while_the_services_run_and_deletes_nothing(tmp_path: Path) -> None:
    var = _local_state(tmp_path)
    with socket.socket() as service:
        service.bind(("127.0.0.1", 0))
        service.listen()
        port = service.getsockname()[1]
        ran = _reset(tmp_path, port)
    assert ran.returncode != 0
    assert ran.stderr.strip() == (
        f"127.0.0.1:{port} is in use: stop `make run` (Ctrl-C) first, then `make reset` again"
    )
    assert all((var / name).exists() for name in DATABASES + KEPT)
