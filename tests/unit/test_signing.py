"""Signing keys on disk, delivery signatures, the key set, and the Standard Webhooks headers."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dispatcher_service.keyring import KeyRing, KeyRingError, PublicKey, to_jwks
from dispatcher_service.signing import (
    Signature,
    SignatureAlgorithm,
    delivery_headers,
    standard_webhooks_signature,
)
from webhook_receiver import generate_ecdsa_key, key_id, load_public_key, private_key_pem

ECDSA = SignatureAlgorithm.ECDSA_P256_SHA256
RSA = SignatureAlgorithm.RSA_PKCS1_SHA256
# Not ASCII on purpose: the signature is over the UTF-8 bytes.
PAYLOAD = '{"details":{"messageType":"event.claim.created.v1","name":"Zoë"},"messageId":"m-1"}'
# The published Standard Webhooks example (also in the Svix and standard-webhooks test suites).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NODE_VERIFY = """
const crypto = require("node:crypto");
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const results = JSON.parse(input).map((c) =>
    crypto.createVerify("SHA256").update(c.payload).verify(c.pem, c.signature, "base64"),
  );
  process.stdout.write(JSON.stringify(results));
});
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(scope="module")
def shared_ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """A key ring for tests that only read it (generating RSA keys is slow)."""
    return KeyRing.open(tmp_path_factory.mktemp("shared") / "keys")


@pytest.fixture(autouse=True)
def _no_leftover_temporary_files(tmp_path: Path) -> Iterator[None]:
    yield
    leftovers = [path.name for path in tmp_path.rglob("*.tmp")]
    assert not leftovers, f"atomic writes left temporary files: {leftovers}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "signing-keys"


def verify_with_cryptography(key: PublicKey, signature: Signature, payload: str) -> None:
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    raw = base64.b64decode(signature.value_b64, validate=True)
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(raw, payload.encode(), ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(raw, payload.encode(), padding.PKCS1v15(), hashes.SHA256())


def key_of(ring: KeyRing, signature: Signature) -> PublicKey:
    found = ring.public_key(signature.key_id)
    assert found is not None, f"key {signature.key_id} is not published"
    return found


def active_ids(ring: KeyRing) -> dict[SignatureAlgorithm, str]:
    return {key.algorithm: key.key_id for key in ring.public_keys() if key.active}


def private_key_files(directory: Path) -> set[str]:
    return {path.stem for path in directory.glob("*.pem")}


# --- keys on disk ----------------------------------------------------------------------


def test_first_open_creates_one_active_key_per_algorithm(keys_dir: Path, clock: FakeClock) -> None:
    ring = KeyRing.open(keys_dir, clock=clock)

    keys = ring.public_keys()
    assert sorted(key.algorithm for key in keys) == sorted(SignatureAlgorithm)
    assert all(key.active and key.create_time == clock.now for key in keys)
    assert private_key_files(keys_dir) == {key.key_id for key in keys}
    for key in keys:
        public = load_public_key(key.public_key_pem)
        assert key.key_id == key_id(public), "a key id is the RFC 7638 thumbprint of its key"
        if key.algorithm is ECDSA:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert isinstance(public.curve, ec.SECP256R1)
        else:
            assert isinstance(public, rsa.RSAPublicKey)
            assert public.key_size == 2048


def test_private_keys_are_pkcs8_files_only_the_owner_can_read(keys_dir: Path) -> None:
    KeyRing.open(keys_dir)

    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    files = list(keys_dir.glob("*.pem"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_the_index_names_each_key_with_its_algorithm_status_and_times(
    keys_dir: Path, clock: FakeClock
) -> None:
    ring = KeyRing.open(keys_dir, clock=clock)
    clock.advance(timedelta(hours=1))
    ring.rotate(RSA)

    entries = json.loads((keys_dir / "keys.json").read_text())["keys"]
    by_status = {(entry["algorithm"], entry["status"]) for entry in entries}
    assert by_status == {
        ("ecdsa-p256-sha256", "active"),
        ("rsa-pkcs1-sha256", "active"),
        ("rsa-pkcs1-sha256", "retired"),
    }
    retired = next(entry for entry in entries if entry["status"] == "retired")
    assert datetime.fromisoformat(retired["retire_time"]) == clock.now
    assert "PRIVATE" not in (keys_dir / "keys.json").read_text()


def test_reopening_the_directory_signs_with_the_same_keys(keys_dir: Path) -> None:
    first = KeyRing.open(keys_dir)
    second = KeyRing.open(keys_dir)

    assert active_ids(second) == active_ids(first)
    for algorithm in SignatureAlgorithm:
        signature = second.sign(PAYLOAD, algorithm)
        verify_with_cryptography(key_of(first, signature), signature, PAYLOAD)


def test_a_private_key_file_that_is_not_the_indexed_key_is_refused(keys_dir: Path) -> None:
    ring = KeyRing.open(keys_dir)
    ecdsa_id = active_ids(ring)[ECDSA]
    (keys_dir / f"{ecdsa_id}.pem").write_bytes(private_key_pem(generate_ecdsa_key()))

    with pytest.raises(KeyRingError, match="does not hold the key"):
        KeyRing.open(keys_dir)


def test_a_missing_private_key_file_is_refused(keys_dir: Path) -> None:
    ring = KeyRing.open(keys_dir)
    (keys_dir / f"{active_ids(ring)[RSA]}.pem").unlink()

    with pytest.raises(KeyRingError, match="cannot load the private key"):
        KeyRing.open(keys_dir)


def test_a_malformed_index_is_refused_rather_than_replaced(keys_dir: Path) -> None:
    KeyRing.open(keys_dir)
    (keys_dir / "keys.json").write_text('{"keys": [{"key_id": "x"}]}')

    with pytest.raises(KeyRingError, match="malformed"):
        KeyRing.open(keys_dir)
    assert len(private_key_files(keys_dir)) == 2


def _open_and_report(directory: str, report: str, start: Any) -> None:
    start.wait()
    ring = KeyRing.open(Path(directory))
    ids = {str(algorithm): key for algorithm, key in active_ids(ring).items()}
    Path(report).write_text(json.dumps(ids))


def test_two_processes_opening_an_empty_directory_at_once_agree_on_the_keys(
    keys_dir: Path, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    reports = [tmp_path / "first.json", tmp_path / "second.json"]
    processes = [
        context.Process(target=_open_and_report, args=(str(keys_dir), str(report), start))
        for report in reports
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    first, second = (json.loads(report.read_text()) for report in reports)
    assert first == second
    on_disk = {str(algorithm): key for algorithm, key in active_ids(KeyRing.open(keys_dir)).items()}
    assert on_disk == first
    assert private_key_files(keys_dir) == set(first.values())


# --- signatures ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(SignatureAlgorithm))
def test_signature_verifies_with_the_public_key_of_the_named_key(
    shared_ring: KeyRing, algorithm: SignatureAlgorithm
) -> None:
    signature = shared_ring.sign(PAYLOAD, algorithm)

    assert signature.algorithm is algorithm
    assert signature.key_id == shared_ring.active_key_id(algorithm)
    verify_with_cryptography(key_of(shared_ring, signature), signature, PAYLOAD)


def test_a_changed_payload_does_not_verify(shared_ring: KeyRing) -> None:
    signature = shared_ring.sign(PAYLOAD)

    with pytest.raises(InvalidSignature):
        verify_with_cryptography(key_of(shared_ring, signature), signature, PAYLOAD + " ")


def test_ecdsa_is_the_default_and_its_signatures_are_der_encoded(shared_ring: KeyRing) -> None:
    signature = shared_ring.sign(PAYLOAD)

    assert signature.algorithm is ECDSA
    raw = base64.b64decode(signature.value_b64)
    r, s = decode_dss_signature(raw)  # raises unless DER
    assert r > 0
    assert s > 0
    assert len(raw) != 64, "not the raw r||s form that Node's default verify rejects"


@pytest.mark.node
def test_signatures_verify_with_nodes_ordinary_verify_call(shared_ring: KeyRing) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node must be on PATH when CI is set")
        pytest.skip("node is not on PATH")
    cases = []
    for algorithm in SignatureAlgorithm:
        signature = shared_ring.sign(PAYLOAD, algorithm)
        pem = key_of(shared_ring, signature).public_key_pem
        cases.append({"payload": PAYLOAD, "pem": pem, "signature": signature.value_b64})
        cases.append({"payload": PAYLOAD + " ", "pem": pem, "signature": signature.value_b64})

    verified = subprocess.run(
        [node, "-e", NODE_VERIFY],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert json.loads(verified.stdout) == [True, False, True, False]


# --- rotation --------------------------------------------------------------------------


def test_rotation_signs_with_a_new_key_and_keeps_the_old_one_published(
    keys_dir: Path, clock: FakeClock
) -> None:
    ring = KeyRing.open(keys_dir, clock=clock)
    before = ring.sign(PAYLOAD, ECDSA)
    clock.advance(timedelta(minutes=5))

    new = ring.rotate(ECDSA)

    after = ring.sign(PAYLOAD, ECDSA)
    assert after.key_id == new.key_id != before.key_id
    old = key_of(ring, before)
    assert not old.active
    assert old.retire_time == clock.now
    verify_with_cryptography(old, before, PAYLOAD)
    verify_with_cryptography(key_of(ring, after), after, PAYLOAD)
    assert before.key_id not in private_key_files(keys_dir), "a retired key never signs again"


def test_rotating_one_algorithm_leaves_the_other_alone(keys_dir: Path) -> None:
    ring = KeyRing.open(keys_dir)
    before = active_ids(ring)

    ring.rotate(RSA)

    after = active_ids(ring)
    assert after[ECDSA] == before[ECDSA]
    assert after[RSA] != before[RSA]


def test_a_rotation_survives_reopening(keys_dir: Path) -> None:
    ring = KeyRing.open(keys_dir)
    old_id = active_ids(ring)[ECDSA]
    new = ring.rotate(ECDSA)

    reopened = KeyRing.open(keys_dir)

    assert reopened.sign(PAYLOAD).key_id == new.key_id
    assert {key.key_id for key in reopened.public_keys()} >= {old_id, new.key_id}


def test_a_rotation_by_another_process_is_picked_up_on_refresh(keys_dir: Path) -> None:
    here = KeyRing.open(keys_dir)
    elsewhere = KeyRing.open(keys_dir)
    unchanged = here.refresh()

    new = elsewhere.rotate(ECDSA)

    assert not unchanged
    assert here.refresh()
    assert here.sign(PAYLOAD).key_id == new.key_id


def test_signing_goes_on_with_the_loaded_keys_when_the_directory_breaks(keys_dir: Path) -> None:
    ring = KeyRing.open(keys_dir)
    (keys_dir / "keys.json").write_text("not json")

    assert not ring.refresh()
    assert ring.sign(PAYLOAD).key_id == active_ids(ring)[ECDSA]


def test_retired_keys_stay_published_for_the_retention_then_disappear(
    keys_dir: Path, clock: FakeClock
) -> None:
    retention = timedelta(days=2)
    ring = KeyRing.open(keys_dir, clock=clock, retired_key_retention=retention)
    old_id = active_ids(ring)[ECDSA]
    ring.rotate(ECDSA)

    clock.advance(retention - timedelta(seconds=1))
    assert ring.public_key(old_id) is not None
    clock.advance(timedelta(seconds=1))
    assert ring.public_key(old_id) is None

    ring.rotate(RSA)
    assert old_id not in (keys_dir / "keys.json").read_text(), "expired keys leave the index"


def test_public_keys_are_listed_newest_first(keys_dir: Path, clock: FakeClock) -> None:
    ring = KeyRing.open(keys_dir, clock=clock)
    clock.advance(timedelta(hours=1))
    ring.rotate(RSA)
    clock.advance(timedelta(hours=1))
    ring.rotate(ECDSA)

    times = [key.create_time for key in ring.public_keys()]
    assert len(times) == 4
    assert times == sorted(times, reverse=True)
    assert ring.public_keys()[0].key_id == active_ids(ring)[ECDSA]


# --- the key set -----------------------------------------------------------------------


def _b64url_int(text: str) -> int:
    assert "=" not in text, "base64url without padding"
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _key_from_jwk(jwk: dict[str, str]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if jwk["kty"] == "EC":
        assert jwk["crv"] == "P-256"
        numbers = ec.EllipticCurvePublicNumbers(
            _b64url_int(jwk["x"]), _b64url_int(jwk["y"]), ec.SECP256R1()
        )
        return numbers.public_key()
    assert jwk["kty"] == "RSA"
    return rsa.RSAPublicNumbers(_b64url_int(jwk["e"]), _b64url_int(jwk["n"])).public_key()


def test_jwks_keys_load_back_and_verify_signatures(shared_ring: KeyRing) -> None:
    jwks = to_jwks(shared_ring.public_keys())
    by_kid = {jwk["kid"]: jwk for jwk in jwks["keys"]}

    for algorithm in SignatureAlgorithm:
        signature = shared_ring.sign(PAYLOAD, algorithm)
        jwk = by_kid[signature.key_id]
        assert jwk["alg"] == algorithm.jws_name
        assert jwk["use"] == "sig"
        loaded = _key_from_jwk(jwk)
        pem = loaded.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        verify_with_cryptography(key_of(shared_ring, signature), signature, PAYLOAD)
        assert pem == key_of(shared_ring, signature).public_key_pem


def test_jwks_carries_only_public_members_of_every_published_key(shared_ring: KeyRing) -> None:
    jwks = to_jwks(shared_ring.public_keys())

    assert [jwk["kid"] for jwk in jwks["keys"]] == [k.key_id for k in shared_ring.public_keys()]
    members = {name for jwk in jwks["keys"] for name in jwk}
    assert members <= {"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"}
    assert {jwk["alg"] for jwk in jwks["keys"]} == {"ES256", "RS256"}
    json.dumps(jwks)


# --- Standard Webhooks -----------------------------------------------------------------


def test_standard_webhooks_signature_matches_the_published_example() -> None:
    signed = standard_webhooks_signature(
        secret=SPEC_SECRET, message_id=SPEC_ID, timestamp=SPEC_TIMESTAMP, body=SPEC_BODY
    )

    assert signed == SPEC_SIGNATURE


def test_standard_webhooks_library_accepts_our_headers(shared_ring: KeyRing) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    body = json.dumps({"payloadAsString": PAYLOAD}).encode()
    timestamp = int(datetime.now(UTC).timestamp())
    headers = delivery_headers(
        message_id="m-1",
        timestamp=timestamp,
        body=body,
        signature=shared_ring.sign(PAYLOAD),
        secret=SPEC_SECRET,
        user_agent="webhooks-dispatcher/test",
    )

    verified = standardwebhooks.Webhook(SPEC_SECRET).verify(body, headers)

    assert verified == {"payloadAsString": PAYLOAD}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SPEC_SECRET).verify(body + b" ", headers)


def test_delivery_headers_name_the_message_the_time_and_the_signing_key() -> None:
    signature = Signature(key_id="kid-1", algorithm=RSA, value_b64="c2ln")

    headers = delivery_headers(
        message_id=SPEC_ID,
        timestamp=SPEC_TIMESTAMP,
        body=SPEC_BODY,
        signature=signature,
        secret=SPEC_SECRET,
        user_agent="webhooks-dispatcher/1.0",
    )

    assert headers == {
        "content-type": "application/json",
        "user-agent": "webhooks-dispatcher/1.0",
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
        "webhook-key-id": "kid-1",
        "webhook-signature-algorithm": "RS256",
    }


def test_without_a_secret_there_is_no_webhook_signature_header() -> None:
    signature = Signature(key_id="kid-1", algorithm=ECDSA, value_b64="c2ln")

    headers = delivery_headers(
        message_id="m-1",
        timestamp=1,
        body=b"{}",
        signature=signature,
        secret=None,
        user_agent="ua",
    )

    assert "webhook-signature" not in headers
    assert headers["webhook-signature-algorithm"] == "ES256"


def test_a_message_id_that_would_break_the_headers_is_refused() -> None:
    signature = Signature(key_id="kid-1", algorithm=ECDSA, value_b64="c2ln")

    with pytest.raises(ValueError, match="webhook-id"):
        delivery_headers(
            message_id="m-1\r\nx-injected: 1",
            timestamp=1,
            body=b"{}",
            signature=signature,
            secret=None,
            user_agent="ua",
        )


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_"])
def test_a_secret_that_is_not_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        standard_webhooks_signature(secret=secret, message_id="m", timestamp=1, body=b"")
