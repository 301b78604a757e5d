"""`python -m dispatcher_service.rotate_keys`: rotates the dispatcher's signing keys.

Creates a new active key of each named algorithm (both by default) in
`DISPATCHER_SIGNING_KEYS_DIR`. Running dispatchers sharing that directory sign with the
new key within seconds; the old public keys stay published (ListSigningKeys, the JWKS)
for `DISPATCHER_RETIRED_KEY_RETENTION_DAYS` after their retirement, so receivers can
still check what was signed before.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from pydantic import ValidationError

from dispatcher_service.keyring import KeyRing, KeyRingError
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.signing import SignatureAlgorithm
from service_common.settings import settings_problems

_BY_NAME = {algorithm.jws_name: algorithm for algorithm in SignatureAlgorithm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--algorithm",
        choices=sorted(_BY_NAME),
        action="append",
        help="the algorithm to rotate (repeatable; default: every one)",
    )
    args = parser.parse_args(argv)
    try:
        settings = DispatcherSettings()
    except ValidationError as exc:
        print(
            f"invalid DISPATCHER_* settings: {settings_problems(exc, 'DISPATCHER_')}",
            file=sys.stderr,
        )
        return 2
    try:
        ring = KeyRing.open(
            settings.signing_keys_dir,
            retired_key_retention=timedelta(days=settings.retired_key_retention_days),
        )
        for name in args.algorithm or sorted(_BY_NAME):
            key = ring.rotate(_BY_NAME[name])
            print(f"{name}: new active key {key.key_id}")
    except (KeyRingError, OSError) as exc:
        print(f"cannot rotate keys in {settings.signing_keys_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
