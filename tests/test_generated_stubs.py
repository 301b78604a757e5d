"""The committed gRPC stubs are exactly what protos/ generates."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_what_the_protos_generate(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "generate_protos.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    generated = sorted(p.name for p in (tmp_path / "webhooks" / "v1").iterdir())
    committed = sorted(
        p.name for p in (ROOT / "webhooks" / "v1").iterdir() if p.name != "__pycache__"
    )
    assert generated == committed, "run `make protos` and commit the result"
    _, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "webhooks" / "v1", ROOT / "webhooks" / "v1", generated, shallow=False
    )
    assert mismatch == [], f"stale stubs {mismatch}: run `make protos`"
    assert errors == []
