"""How values of the stubs read on a page: times, states, algorithms. Pure functions,
registered as Jinja2 filters."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from webhooks.v1 import dispatcher_service_pb2 as dispatcher_pb
from webhooks.v1 import subscription_service_pb2 as subscription_pb

__all__ = ["FILTERS", "algorithm_name", "state_name", "when", "when_iso"]


def _datetime(value: Timestamp) -> datetime | None:
    if value.seconds == 0 and value.nanos == 0:
        return None
    return value.ToDatetime(tzinfo=UTC)


def when(value: Timestamp) -> str:
    """`2026-12-05 15:12:03 UTC`, or an em dash for an unset time."""
    moment = _datetime(value)
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def when_iso(value: Timestamp) -> str:
    """The machine-readable form for `<time datetime=...>`; empty for an unset time."""
    moment = _datetime(value)
    return "" if moment is None else moment.isoformat().replace("+00:00", "Z")


def state_name(value: dispatcher_pb.DeliveryState.ValueType) -> str:
    """`DELIVERY_STATE_RETRYING` as `retrying`."""
    name: str = dispatcher_pb.DeliveryState.Name(value)
    return name.removeprefix("DELIVERY_STATE_").lower()


def algorithm_name(value: subscription_pb.SignatureAlgorithm.ValueType) -> str:
    if value == subscription_pb.SIGNATURE_ALGORITHM_UNSPECIFIED:
        return "default (ECDSA P-256)"
    labels = {
        subscription_pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256: "ECDSA P-256, SHA-256",
        subscription_pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256: "RSA PKCS#1, SHA-256",
    }
    return labels.get(value, str(value))


FILTERS = {
    "when": when,
    "when_iso": when_iso,
    "state_name": state_name,
    "algorithm_name": algorithm_name,
}
