"""Where the contract files are."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONTRACTS_DIR_ENV", "EVENTS_SUBDIR", "RELEASED_FILE", "contracts_dir"]

CONTRACTS_DIR_ENV = "WEBHOOK_CONTRACTS_DIR"
EVENTS_SUBDIR = "events"
RELEASED_FILE = Path("released") / "contracts.json"


def contracts_dir() -> Path:
    """The ``contracts/`` directory: ``$WEBHOOK_CONTRACTS_DIR`` if set, else the copy shipped
    inside the package (an installed wheel), else the repository's.

    Functions that read contracts also take an explicit directory, which wins over all three.
    """
    override = os.environ.get(CONTRACTS_DIR_ENV)
    if override:
        return Path(override).resolve()
    package = Path(__file__).resolve().parent
    shipped = package / "contracts"
    return shipped if shipped.is_dir() else package.parent / "contracts"
