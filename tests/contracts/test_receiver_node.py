"""Interoperability with Node: the verification snippet of webhook_receiver/README.md, run by
``node`` itself, accepts what the kit signs, and the kit accepts what Node signs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.contracts.contract_samples import valid_payload
from webhook_receiver import (
    PrivateKey,
    build_webhook,
    generate_ecdsa_key,
    payload_as_string,
    private_key_pem,
    public_key_pem,
    verify_signature,
    verify_webhook,
)

README = Path(__file__).resolve().parents[2] / "webhook_receiver" / "README.md"
HARNESS = """
const fs = require("node:fs");
const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const verified = cases.verify.map(({ rawBody, publicKeyPem }) => {
  try {
    return { ok: true, payload: verifyWebhook(rawBody, publicKeyPem) };
  } catch (error) {
    return { ok: false, error: error.message };
  }
});
const signed = cases.sign.map(({ text, privateKeyPem }) =>
  crypto.createSign("SHA256").update(text).sign(privateKeyPem, "base64"),
);
process.stdout.write(JSON.stringify({ verified, signed }));
"""

pytestmark = pytest.mark.node


def documented_snippet() -> str:
    """The Node code block of the receiver README that verifies a webhook."""
    blocks: list[str] = re.findall(
        r"```js\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL
    )
    (snippet,) = [block for block in blocks if "createVerify" in block]
    assert 'createVerify("SHA256")' in snippet
    assert '.verify(publicKeyPem, body.signature, "base64")' in snippet
    return snippet


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is required when CI is set")
        pytest.skip("node is not installed")
    return node


def run_node(tmp_path: Path, cases: dict[str, Any]) -> dict[str, Any]:
    script = tmp_path / "verify.js"
    script.write_text(documented_snippet() + HARNESS, encoding="utf-8")
    data = tmp_path / "cases.json"
    data.write_text(json.dumps(cases), encoding="utf-8")
    completed = subprocess.run(
        [node_executable(), str(script), str(data)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def international_payload() -> dict[str, Any]:
    payload = valid_payload("event.note.created.v1")
    payload["details"]["text"] = 'Zürich → 東京 🚀 \u2028 "quoted" \\ tab\t'
    payload["details"]["amount"] = 50100
    payload["user"] = {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"}
    return payload


@pytest.fixture(params=["ecdsa", "rsa"])
def private_key(
    request: pytest.FixtureRequest,
    ecdsa_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> PrivateKey:
    return ecdsa_key if request.param == "ecdsa" else rsa_key


def test_node_verifies_what_the_kit_signs_and_refuses_tampering(
    tmp_path: Path, private_key: PrivateKey
) -> None:
    payload = international_payload()
    genuine = build_webhook(payload, private_key)
    tampered = {**genuine, "payload": {**payload, "messageId": "another"}}
    forged = build_webhook(payload, generate_ecdsa_key())
    pem = public_key_pem(private_key).decode()
    cases = {
        "verify": [
            {"rawBody": json.dumps(body, ensure_ascii=False), "publicKeyPem": pem}
            for body in (genuine, tampered, forged)
        ],
        "sign": [],
    }
    verified = run_node(tmp_path, cases)["verified"]
    assert verified[0] == {"ok": True, "payload": payload}
    assert verified[1] == {"ok": False, "error": "payload differs from payloadAsString"}
    assert verified[2] == {"ok": False, "error": "invalid signature"}


def test_the_kit_verifies_what_node_signs(tmp_path: Path, private_key: PrivateKey) -> None:
    payload = international_payload()
    text = payload_as_string(payload)
    cases = {
        "verify": [],
        "sign": [{"text": text, "privateKeyPem": private_key_pem(private_key).decode()}],
    }
    (signature,) = run_node(tmp_path, cases)["signed"]
    verify_signature(text, signature, public_key_pem(private_key))
    body = {"payload": payload, "signature": signature, "payloadAsString": text}
    webhook = verify_webhook(json.dumps(body).encode(), public_key_pem(private_key))
    assert webhook.payload == payload
