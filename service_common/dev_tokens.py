"""Development tokens for running locally: `python -m service_common.dev_tokens var/`.

Writes `tokens.json` (hashes only, as the services read it) with two tokens, and keeps
the tokens themselves next to it, readable by the owner only:

- `dev-token`: tenant `demo`, every scope of a tenant (for trying the APIs);
- `platform-token`: every tenant, `admin` (what the dispatcher uses to watch subscriptions).

Existing files are kept, so the printed tokens stay valid across runs.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from service_common.auth import Scope, hash_token

__all__ = ["ensure_dev_tokens"]

_TENANT_SCOPES = [
    Scope.PUBLISH,
    Scope.SUBSCRIPTIONS_READ,
    Scope.SUBSCRIPTIONS_WRITE,
    Scope.DELIVERIES_READ,
    Scope.DELIVERIES_WRITE,
]


def _token_file(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        os.chmod(path, 0o600)
    return path.read_text().strip()


def ensure_dev_tokens(directory: Path) -> tuple[str, str]:
    """Creates (or reuses) the development tokens; returns (dev token, platform token)."""
    directory.mkdir(parents=True, exist_ok=True)
    dev = _token_file(directory / "dev-token")
    platform = _token_file(directory / "platform-token")
    entries = [
        {"sha256": hash_token(dev), "tenant": "demo", "scopes": [str(s) for s in _TENANT_SCOPES]},
        {"sha256": hash_token(platform), "tenant": "*", "scopes": [str(Scope.ADMIN)]},
    ]
    (directory / "tokens.json").write_text(json.dumps({"tokens": entries}, indent=2) + "\n")
    return dev, platform


def main(argv: list[str]) -> int:
    directory = Path(argv[1] if len(argv) > 1 else "var")
    dev, _ = ensure_dev_tokens(directory)
    print(f"tokens file:       {directory / 'tokens.json'}")
    print(f"development token: {dev}   (tenant 'demo'; also in {directory / 'dev-token'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
