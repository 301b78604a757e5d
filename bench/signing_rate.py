"""Signatures per second: ECDSA P-256 and RSA-2048, through the key ring and raw.

For each algorithm, on a typical `payloadAsString` (about 400 bytes):

- raw limit: `private_key.sign(...)` of `cryptography`, nothing else;
- key ring: `KeyRing.sign`, what a delivery pays (active-key lookup, base64, the result).

RSA is also measured in a thread pool of 2 (RSA releases the GIL, so callers offload it);
the pooled figure is worth most on a machine with at least 2 cores.

Each measurement is bounded by a count and a time, and repeated; the median is reported.

    .venv/bin/python bench/signing_rate.py [--seconds 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from dispatcher_service.keyring import KeyRing
from dispatcher_service.signing import SignatureAlgorithm
from webhook_wire.canonical import payload_as_string

MAX_CALLS = 200_000
POOL_THREADS = 2
PAYLOAD = payload_as_string(
    {
        "details": {
            "messageType": "event.claim.created.v1",
            "claimId": "5f8d0d55-b8a4-4a1c-8a8e-0f1f4d6c9e21",
            "policyId": "pol_0193f1e2c4",
            "amount": 125000,
            "currency": "EUR",
            "description": "Water damage in the kitchen after a pipe burst on the first floor",
        },
        "messageId": "09feeb6f-350a-430a-a040-cd1c558cbc91",
        "timestamp": "2021-10-14T15:33:16.848Z",
        "user": {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"},
    }
)


def count(sign: Callable[[], object], *, seconds: float) -> int:
    """How many `sign()` calls fit in `seconds`, at most `MAX_CALLS`."""
    calls, batch = 0, 20
    deadline = time.perf_counter() + seconds
    while calls < MAX_CALLS and time.perf_counter() < deadline:
        for _ in range(batch):
            sign()
        calls += batch
    return calls


def rate(sign: Callable[[], object], *, seconds: float, threads: int = 1) -> float:
    """Calls per second of `sign()`, run by `threads` threads at once."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        started = time.perf_counter()
        calls = sum(pool.map(lambda _: count(sign, seconds=seconds), range(threads)))
        return calls / (time.perf_counter() - started)


def median_rate(
    sign: Callable[[], object], *, seconds: float, repeat: int, threads: int = 1
) -> float:
    return statistics.median(rate(sign, seconds=seconds, threads=threads) for _ in range(repeat))


def raw_signer(ring_dir: Path, ring: KeyRing, algorithm: SignatureAlgorithm) -> Callable[[], bytes]:
    """The private key's own sign call, loaded from the key ring's file."""
    pem = (ring_dir / f"{ring.active_key_id(algorithm)}.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    data = PAYLOAD.encode()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(hashes.SHA256())
        return lambda: key.sign(data, ecdsa)
    assert isinstance(key, rsa.RSAPrivateKey)
    pkcs1 = padding.PKCS1v15()
    return lambda: key.sign(data, pkcs1, hashes.SHA256())


def ring_signer(ring: KeyRing, algorithm: SignatureAlgorithm) -> Callable[[], object]:
    return lambda: ring.sign(PAYLOAD, algorithm)


def measure(
    name: str, ring: KeyRing, ring_dir: Path, algorithm: SignatureAlgorithm, **options: Any
) -> None:
    ours = median_rate(ring_signer(ring, algorithm), **options)
    raw = median_rate(raw_signer(ring_dir, ring, algorithm), **options)
    print(f"{name:<24} {ours:>9,.0f}/s   raw limit {raw:>9,.0f}/s   ratio {ours / raw:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    options = {"seconds": arguments.seconds, "repeat": arguments.repeat}
    print(f"payloadAsString of {len(PAYLOAD.encode())} bytes; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as directory:
        ring_dir = Path(directory) / "keys"
        ring = KeyRing.open(ring_dir)
        ecdsa, rsa_ = SignatureAlgorithm.ECDSA_P256_SHA256, SignatureAlgorithm.RSA_PKCS1_SHA256
        measure("ES256, one thread", ring, ring_dir, ecdsa, **options)
        measure("RS256, one thread", ring, ring_dir, rsa_, **options)
        measure(
            f"RS256, {POOL_THREADS} threads", ring, ring_dir, rsa_, threads=POOL_THREADS, **options
        )


if __name__ == "__main__":
    main()
