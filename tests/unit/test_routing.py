"""The routing table: which enabled subscriptions of a tenant receive a message type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher_service.routing import Change, Route, RoutingTable
from dispatcher_service.signing import SignatureAlgorithm

CLAIM_CREATED = "event.claim.created.v1"
CLAIM_UPDATED = "event.claim.updated.v1"
NOTE_CREATED = "event.note.created.v1"


def route(
    subscription_id: str = "sub_1",
    *,
    tenant: str = "acme",
    enabled: bool = True,
    url: str = "https://receiver.example.com/hooks",
) -> Route:
    return Route(
        subscription_id=subscription_id,
        tenant=tenant,
        url=url,
        signature_algorithm=SignatureAlgorithm.ECDSA_P256_SHA256,
        secret=None,
        enabled=enabled,
    )


def table_with(*entries: tuple[Route, Sequence[str]]) -> RoutingTable:
    table = RoutingTable()
    for entry, message_types in entries:
        table.apply(Change.CREATED, entry, message_types=message_types)
    return table


def ids(routes: Sequence[Route]) -> list[str]:
    return sorted(found.subscription_id for found in routes)


def test_an_exact_type_routes_only_that_type() -> None:
    table = table_with((route("sub_1"), [CLAIM_CREATED]))

    assert table.routes_for("acme", CLAIM_CREATED) == [route("sub_1")]
    assert table.routes_for("acme", CLAIM_UPDATED) == []


def test_a_prefix_pattern_routes_every_type_under_it_and_nothing_beside_it() -> None:
    table = table_with((route("sub_1"), ["event.claim.*"]))

    assert ids(table.routes_for("acme", CLAIM_CREATED)) == ["sub_1"]
    assert ids(table.routes_for("acme", CLAIM_UPDATED)) == ["sub_1"]
    assert table.routes_for("acme", "event.claimant.created.v1") == []
    assert table.routes_for("acme", NOTE_CREATED) == []


def test_nested_patterns_and_exact_types_each_match() -> None:
    table = table_with(
        (route("sub_exact"), [CLAIM_CREATED]),
        (route("sub_claims"), ["event.claim.*"]),
        (route("sub_events"), ["event.*"]),
    )

    assert ids(table.routes_for("acme", CLAIM_CREATED)) == ["sub_claims", "sub_events", "sub_exact"]
    assert ids(table.routes_for("acme", NOTE_CREATED)) == ["sub_events"]


def test_a_subscription_matching_several_ways_is_routed_once() -> None:
    table = table_with((route("sub_1"), [CLAIM_CREATED, "event.claim.*", "event.*"]))

    assert table.routes_for("acme", CLAIM_CREATED) == [route("sub_1")]


def test_another_tenants_subscriptions_are_never_routed() -> None:
    table = table_with(
        (route("sub_acme", tenant="acme"), [CLAIM_CREATED]),
        (route("sub_globex", tenant="globex"), ["event.*"]),
    )

    assert ids(table.routes_for("acme", CLAIM_CREATED)) == ["sub_acme"]
    assert ids(table.routes_for("globex", CLAIM_CREATED)) == ["sub_globex"]
    assert table.routes_for("initech", CLAIM_CREATED) == []


def test_a_disabled_subscription_is_known_but_not_routed() -> None:
    disabled = route("sub_1", enabled=False)
    table = table_with((disabled, [CLAIM_CREATED, "event.*"]))

    assert table.routes_for("acme", CLAIM_CREATED) == []
    assert table.get("sub_1") == disabled
    assert len(table) == 1


def test_disabling_then_enabling_removes_and_restores_the_route() -> None:
    table = table_with((route("sub_1"), ["event.claim.*"]))

    table.apply(Change.UPDATED, route("sub_1", enabled=False), message_types=["event.claim.*"])
    assert table.routes_for("acme", CLAIM_CREATED) == []

    table.apply(Change.UPDATED, route("sub_1"), message_types=["event.claim.*"])
    assert table.routes_for("acme", CLAIM_CREATED) == [route("sub_1")]


def test_an_update_replaces_the_types_and_the_route_fields() -> None:
    table = table_with((route("sub_1"), [CLAIM_CREATED, "event.claim.*"]))
    moved = replace(
        route("sub_1", url="https://elsewhere.example.com/"),
        signature_algorithm=SignatureAlgorithm.RSA_PKCS1_SHA256,
        secret="whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
    )

    table.apply(Change.UPDATED, moved, message_types=[NOTE_CREATED])

    assert table.routes_for("acme", CLAIM_CREATED) == []
    assert table.routes_for("acme", CLAIM_UPDATED) == []
    assert table.routes_for("acme", NOTE_CREATED) == [moved]
    assert table.get("sub_1") == moved


def test_a_deleted_subscription_is_forgotten() -> None:
    table = table_with((route("sub_1"), [CLAIM_CREATED]), (route("sub_2"), ["event.*"]))

    table.apply(Change.DELETED, route("sub_1"), message_types=[CLAIM_CREATED])

    assert ids(table.routes_for("acme", CLAIM_CREATED)) == ["sub_2"]
    assert table.get("sub_1") is None
    assert len(table) == 1


def test_replayed_and_out_of_order_changes_leave_the_latest_state() -> None:
    table = RoutingTable()
    table.apply(Change.UPDATED, route("sub_1"), message_types=[CLAIM_CREATED])
    table.apply(Change.CREATED, route("sub_1"), message_types=[CLAIM_CREATED])
    table.apply(Change.DELETED, route("sub_2"), message_types=[CLAIM_CREATED])

    assert table.routes_for("acme", CLAIM_CREATED) == [route("sub_1")]
    assert len(table) == 1


def test_a_tenant_whose_last_subscription_goes_has_no_leftover_patterns() -> None:
    table = table_with((route("sub_1"), ["event.*"]))
    table.apply(Change.DELETED, route("sub_1"), message_types=["event.*"])
    table.apply(Change.CREATED, route("sub_2"), message_types=[CLAIM_CREATED])

    assert table.routes_for("acme", NOTE_CREATED) == []
    assert table.routes_for("acme", CLAIM_CREATED) == [route("sub_2")]


# --- against a model: a plain list of subscriptions, filtered ---------------------------

_TENANTS = ["acme", "globex"]
_TYPES = [CLAIM_CREATED, CLAIM_UPDATED, NOTE_CREATED, "event.claimant.created.v1"]
_ENTRIES = [*_TYPES, "event.*", "event.claim.*", "event.note.*", "event.claim.created.*"]
_changes = st.lists(
    st.tuples(
        st.sampled_from(list(Change)),
        st.sampled_from(["sub_1", "sub_2", "sub_3", "sub_4"]),
        st.sampled_from(_TENANTS),
        st.booleans(),
        st.lists(st.sampled_from(_ENTRIES), min_size=1, max_size=4, unique=True),
    ),
    max_size=30,
)


def _model_receives(message_types: Sequence[str], message_type: str) -> bool:
    return any(
        message_type.startswith(entry[:-1]) if entry.endswith("*") else entry == message_type
        for entry in message_types
    )


@settings(max_examples=300, deadline=None)
@given(changes=_changes)
def test_routes_are_those_a_plain_filter_over_all_subscriptions_finds(
    changes: list[tuple[Change, str, str, bool, list[str]]],
) -> None:
    table = RoutingTable()
    model: dict[str, tuple[Route, list[str]]] = {}
    for change, subscription_id, tenant, enabled, message_types in changes:
        entry = route(subscription_id, tenant=tenant, enabled=enabled)
        table.apply(change, entry, message_types=message_types)
        if change is Change.DELETED:
            model.pop(subscription_id, None)
        else:
            model[subscription_id] = (entry, message_types)

    for tenant in _TENANTS:
        for message_type in _TYPES:
            expected = [
                entry.subscription_id
                for entry, message_types in model.values()
                if entry.tenant == tenant
                and entry.enabled
                and _model_receives(message_types, message_type)
            ]
            assert ids(table.routes_for(tenant, message_type)) == sorted(expected)
    assert len(table) == len(model)
