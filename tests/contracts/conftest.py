"""Fixtures of the contract and receiver-kit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from webhook_contracts import Registry, contracts_dir, load_registry
from webhook_receiver import generate_ecdsa_key, generate_rsa_key


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="session")
def ecdsa_key() -> ec.EllipticCurvePrivateKey:
    return generate_ecdsa_key()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


@pytest.fixture
def contracts_copy(tmp_path: Path) -> Path:
    """A writable copy of ``contracts/``, for tests that change contracts."""
    copied = tmp_path / "contracts"
    shutil.copytree(contracts_dir(), copied)
    return copied
