"""A dispatcher process's JSON logs carry the ids of the work at hand and no credential,
and with `DISPATCHER_TRACING_EXPORTER=otlp` its spans reach an OTLP collector."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from subscription_service.server import RunningServer
from tests.conftest import Tokens
from tests.dispatcher_process import DispatcherProcess, dispatcher_environment
from tests.integration.conftest import auth, eventually
from tests.integration.test_dispatcher import CLAIM_CREATED, SECRET, claim_event, subscribe
from tests.receiver import Receiver
from webhooks.v1 import dispatcher_service_pb2 as pb

if TYPE_CHECKING:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceAsyncStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceAsyncStub as Stub
else:
    from webhooks.v1.dispatcher_service_pb2_grpc import DispatcherServiceStub as DispatcherStub
    from webhooks.v1.subscription_service_pb2_grpc import SubscriptionServiceStub as Stub


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector on loopback that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get(
                "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    kept = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield kept, port
    await server.stop(0)


async def test_json_logs_name_the_delivery_and_spans_reach_the_collector(
    subscription_server: RunningServer,
    stub: Stub,
    receiver: Receiver,
    tokens: Tokens,
    collector: tuple[Collector, int],
    new_database_url: Callable[[str], str],
    tmp_path: Path,
) -> None:
    kept, collector_port = collector
    keys_dir = tmp_path / "keys"
    process = DispatcherProcess(
        dispatcher_environment(
            database_url=new_database_url("dispatcher"),
            tokens=tokens,
            subscriptions_port=subscription_server.port,
            directory=tmp_path,
            overrides={
                "DISPATCHER_RETRY_SCHEDULE": "0s,0.2s",
                "DISPATCHER_LOG_FORMAT": "json",
                "DISPATCHER_TRACING_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
    )
    receiver.script("/flaky", 500, 204)
    await subscribe(stub, tokens.acme, receiver.url("/flaky"), CLAIM_CREATED, secret=SECRET)
    try:
        port = await process.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            dispatcher = DispatcherStub(channel)
            deadline = time.monotonic() + 15
            while True:  # until the new process has loaded its routing table
                try:
                    answer = await dispatcher.PublishEvent(
                        pb.PublishEventRequest(event=claim_event("logged-1")),
                        metadata=auth(tokens.acme_publisher),
                    )
                    break
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert answer.result.deliveries == 1
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await dispatcher.PublishEvent(
                    pb.PublishEventRequest(event=claim_event("refused-1", amount="lots")),
                    metadata=auth(tokens.acme_publisher),
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await receiver.wait_for(2, path="/flaky")
        await eventually(lambda: any("attempt 1" in line for line in process.log_lines))
        # Spans are sent in batches while the process runs, not only when it stops.
        await eventually(lambda: sum(span.name == "deliver webhook" for _, span in kept.spans) == 2)
    finally:
        process.stop()

    records = [json.loads(line) for line in process.log_lines]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    [failed] = [r for r in records if r["message"].startswith("attempt 1: HTTP 500")]
    assert failed["message_id"] == "logged-1"
    assert failed["delivery_id"].startswith("dlv_")
    assert failed["subscription_id"].startswith("sub_")
    [refusal] = [r for r in records if r["message"].startswith("event refused")]
    assert refusal["message_id"] == "refused-1"
    assert "details.amount" in refusal["message"]
    # No credential: not the tokens, not the subscription's secret, not the private key.
    text = "".join(process.log_lines)
    private_keys = [p.read_text() for p in keys_dir.rglob("*") if p.is_file()]
    secrets = [tokens.acme_publisher, tokens.platform, SECRET, SECRET.removeprefix("whsec_")]
    secrets += [
        line
        for pem in private_keys
        if "PRIVATE KEY" in pem
        for line in pem.splitlines()
        if line and "-----" not in line
    ]
    assert private_keys
    assert all(secret not in text for secret in secrets)

    services = {service for service, _ in kept.spans}
    assert services == {"dispatcher"}
    names = {span.name for _, span in kept.spans}
    assert "/webhooks.v1.DispatcherService/PublishEvent" in names
    deliveries = [span for _, span in kept.spans if span.name == "deliver webhook"]
    attributes = [{a.key: a.value for a in span.attributes} for span in deliveries]
    assert {a["webhooks.message_id"].string_value for a in attributes} == {"logged-1"}
    assert sorted(a["http.response.status_code"].int_value for a in attributes) == [204, 500]
