"""The `user` rules are stated once and hold everywhere: the contract accepts exactly the users
the dispatcher accepts (all of id, poolId, originator when there is a user; any string)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher_service.http_api import incoming_event
from service_common.errors import InvalidArgument
from tests.contracts.contract_samples import UNDOCUMENTED_TYPE, valid_payload
from webhook_contracts import Registry
from webhooks.v1 import dispatcher_service_pb2 as pb

FULL = {"id": "USER_ID", "poolId": "POOL_ID", "originator": "ClientAPI"}
USERS: list[object] = [
    FULL,
    {"id": "", "poolId": "", "originator": ""},
    {"id": "USER_ID", "poolId": "POOL_ID"},
    {"id": "USER_ID", "originator": "ClientAPI"},
    {"poolId": "POOL_ID", "originator": "ClientAPI"},
    {},
    {**FULL, "role": "admin"},
    {**FULL, "id": 7},
    {**FULL, "originator": None},
    "USER_ID",
]


def dispatcher_accepts(payload: dict[str, Any]) -> bool:
    try:
        incoming_event(payload, tenant="acme")
    except InvalidArgument:
        return False
    return True


@pytest.mark.parametrize("user", USERS, ids=[repr(user) for user in USERS])
def test_the_contract_accepts_exactly_the_users_that_post_v1_events_accepts(
    registry: Registry, user: object
) -> None:
    payload = valid_payload(UNDOCUMENTED_TYPE)
    payload["user"] = user
    assert registry.get(UNDOCUMENTED_TYPE).is_valid(payload) == dispatcher_accepts(payload)


def test_the_contract_requires_every_field_that_the_grpc_event_user_carries(
    registry: Registry,
) -> None:
    # proto3 strings are never absent, so a gRPC user always has all of its fields.
    grpc_fields = {field.json_name for field in pb.EventUser.DESCRIPTOR.fields}
    user = registry.documents.get("payload")["$defs"]["user"]
    assert grpc_fields == set(user["properties"]) == set(user["required"])
