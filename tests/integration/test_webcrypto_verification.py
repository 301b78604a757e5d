"""A real delivery verifies in Node three ways: `createVerify` with the PEM and the body's DER
signature, `crypto.subtle.verify` with the JWKS key and the `webhook-signature-p1363` header,
and with the key `jose` fetches from the JWKS URL; for ES256 and RS256 subscriptions both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dispatcher_service.server import RunningDispatcher
from tests.conftest import Tokens
from tests.integration.conftest import publish, routed
from tests.integration.test_dispatcher import CLAIM_CREATED, claim_event, subscribe
from tests.node_tools import NODE_DIR, node_executable, run_node_script
from tests.receiver import Receiver
from webhook_receiver import verify_webhook
from webhooks.v1 import subscription_service_pb2 as sub_pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub

SCRIPT = NODE_DIR / "webcrypto_verify.mjs"
NODE_TIMEOUT_SECONDS = 30


@pytest.fixture
def node() -> str:
    return node_executable(purpose="the WebCrypto verification")


async def run_node(node: str, cases: Path) -> list[dict[str, Any]]:
    run = await run_node_script(node, SCRIPT, str(cases), seconds=NODE_TIMEOUT_SECONDS)
    assert run.returncode == 0, run.stderr
    results: list[dict[str, Any]] = json.loads(run.stdout)
    return results


@pytest.mark.node
async def test_a_real_delivery_verifies_with_create_verify_webcrypto_and_jose_es256_and_rs256(
    node: str,
    stub: Stub,
    dispatcher: RunningDispatcher,
    dispatcher_stub: DispatcherStub,
    receiver: Receiver,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    await subscribe(stub, tokens.acme, receiver.url("/es256"), CLAIM_CREATED)
    await subscribe(
        stub,
        tokens.acme,
        receiver.url("/rs256"),
        CLAIM_CREATED,
        signature_algorithm=sub_pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
    )
    await routed(dispatcher, "acme", CLAIM_CREATED, 2)
    await publish(dispatcher_stub, tokens.acme_publisher, [claim_event("webcrypto-1")])
    arrived = sorted(await receiver.wait_for(2), key=lambda request: request.path)
    deliveries = [
        {"headers": {k.lower(): v for k, v in r.headers.items()}, "body": r.body.decode()}
        for r in arrived
    ]
    cases = tmp_path / "deliveries.json"
    base_url = f"http://127.0.0.1:{dispatcher.http_port}"
    cases.write_text(json.dumps({"baseUrl": base_url, "deliveries": deliveries}))

    results = await run_node(node, cases)

    assert [(r["alg"], r["jwkAlg"]) for r in results] == [("ES256", "ES256"), ("RS256", "RS256")]
    for result in results:
        assert result["createVerifyOk"] is True, result
        assert result["subtleOk"] is True, result
        assert result["joseOk"] is True, result
        assert result["subtleTampered"] is False, result
    # Why the header exists: WebCrypto refuses the body's DER ECDSA signature; RSA is the same.
    assert [r["subtleWithDer"] for r in results] == [False, True]
    # The body stays as it was: the Python kit (and OpenSSL-style libraries) verify it.
    for request in arrived:
        key = dispatcher.keys.public_key(request.headers["webhook-key-id"])
        assert key is not None
        assert verify_webhook(request.body, key.public_key_pem).message_id == "webcrypto-1"
