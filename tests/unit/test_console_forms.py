"""The console's pure form helpers: subscription forms, call errors, CSRF origin, session."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
from cryptography.fernet import Fernet
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from console.call_errors import field_errors, form_field
from console.csrf import origin_matches
from console.form_fields import field_text
from console.session import Operator, session_key
from console.subscription_forms import (
    SubscriptionForm,
    create_request,
    form_of,
    list_request,
    posted,
    split_types,
    toggle_request,
    update_request,
)
from service_common.auth import Scope
from webhooks.v1 import subscription_service_pb2 as pb

# --- subscription_forms -------------------------------------------------------------------


def test_split_types_accepts_lines_and_commas_and_drops_blanks_and_repeats() -> None:
    assert split_types(" a.created ,b.deleted\n\n a.created\r\nc.x, ,") == [
        "a.created",
        "b.deleted",
        "c.x",
    ]
    assert split_types("  \n , ") == []


def test_posted_strips_text_reads_checkboxes_and_ignores_non_text_fields() -> None:
    form = posted(
        {
            "url": "  https://example.com/hook ",
            "message_types": "a\nb",
            "description": " d ",
            "signature_algorithm": "rsa-pkcs1-sha256",
            "secret": 42,  # not text: ignored
            "remove_secret": "on",
            "enabled": "off",
            "tenant": "acme",
            "etag": " e1 ",
            "unknown": "x",
        }
    )
    assert form == SubscriptionForm(
        url="https://example.com/hook",
        message_types="a\nb",
        description="d",
        signature_algorithm="rsa-pkcs1-sha256",
        secret="",
        remove_secret=True,
        enabled=False,
        tenant="acme",
        etag="e1",
    )


def test_posted_without_checkboxes_is_disabled_and_keeps_the_secret() -> None:
    form = posted({"url": "https://example.com"})
    assert form.enabled is False
    assert form.remove_secret is False
    assert form.secret == ""


def test_create_request_carries_every_field_with_the_algorithm_enum() -> None:
    form = SubscriptionForm(
        url="https://example.com/hook",
        message_types="a.created, b.deleted\na.created",
        description="desc",
        signature_algorithm="rsa-pkcs1-sha256",
        secret="whsec_abc",
        enabled=False,
        tenant="acme",
    )
    sent = create_request(form).subscription
    assert sent.tenant == "acme"
    assert sent.url == "https://example.com/hook"
    assert list(sent.message_types) == ["a.created", "b.deleted"]
    assert sent.enabled is False
    assert sent.description == "desc"
    assert sent.signature_algorithm == pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256
    assert sent.secret == "whsec_abc"


@pytest.mark.parametrize(
    ("posted_value", "algorithm"),
    [
        ("", pb.SIGNATURE_ALGORITHM_UNSPECIFIED),
        ("ecdsa-p256-sha256", pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256),
        ("rsa-pkcs1-sha256", pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256),
        ("made-up", pb.SIGNATURE_ALGORITHM_UNSPECIFIED),
    ],
)
def test_create_request_maps_the_posted_algorithm(
    posted_value: str, algorithm: pb.SignatureAlgorithm.ValueType
) -> None:
    form = SubscriptionForm(signature_algorithm=posted_value)
    assert create_request(form).subscription.signature_algorithm == algorithm


def test_update_request_with_a_blank_secret_keeps_the_current_one() -> None:
    form = SubscriptionForm(
        url="https://example.com/new",
        message_types="a\nb",
        description="new",
        signature_algorithm="ecdsa-p256-sha256",
        enabled=False,
        tenant="acme",
        etag="e7",
    )
    request = update_request("sub-1", form)
    assert list(request.update_mask.paths) == [
        "url",
        "message_types",
        "description",
        "signature_algorithm",
    ]
    sent = request.subscription
    assert (sent.id, sent.etag, sent.url, sent.description) == (
        "sub-1",
        "e7",
        "https://example.com/new",
        "new",
    )
    assert list(sent.message_types) == ["a", "b"]
    assert sent.signature_algorithm == pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256
    assert sent.secret == ""
    # Enabling is the toggle's business; the tenant is not editable.
    assert sent.enabled is False
    assert sent.tenant == ""


def test_update_request_with_a_new_secret_sends_it_in_the_mask() -> None:
    request = update_request("sub-1", SubscriptionForm(secret="whsec_new"))
    assert list(request.update_mask.paths)[-1] == "secret"
    assert "secret" in request.update_mask.paths
    assert request.subscription.secret == "whsec_new"


def test_update_request_removing_the_secret_clears_it_even_if_one_was_typed() -> None:
    request = update_request("sub-1", SubscriptionForm(secret="whsec_typed", remove_secret=True))
    assert "secret" in request.update_mask.paths
    assert request.subscription.secret == ""


def test_toggle_enable_sends_only_enabled_and_clears_the_reason() -> None:
    request = toggle_request("sub-1", enabled=True, reason="ignored", etag="e3")
    assert list(request.update_mask.paths) == ["enabled"]
    assert request.subscription.id == "sub-1"
    assert request.subscription.enabled is True
    assert request.subscription.disabled_reason == ""
    assert request.subscription.etag == "e3"


def test_toggle_disable_sends_enabled_and_the_reason() -> None:
    request = toggle_request("sub-1", enabled=False, reason="endpoint gone", etag="e4")
    assert list(request.update_mask.paths) == ["enabled", "disabled_reason"]
    assert request.subscription.enabled is False
    assert request.subscription.disabled_reason == "endpoint gone"
    assert request.subscription.etag == "e4"


def test_form_of_round_trips_a_subscription_without_its_secret() -> None:
    stored = pb.Subscription(
        id="sub-1",
        tenant="acme",
        url="https://example.com/hook",
        message_types=["a.created", "b.deleted"],
        enabled=False,
        description="desc",
        signature_algorithm=pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256,
        secret="whsec_hidden",
        etag="e9",
    )
    form = form_of(stored)
    assert form == SubscriptionForm(
        url="https://example.com/hook",
        message_types="a.created\nb.deleted",
        description="desc",
        signature_algorithm="rsa-pkcs1-sha256",
        secret="",
        remove_secret=False,
        enabled=False,
        tenant="acme",
        etag="e9",
    )
    again = update_request("sub-1", form).subscription
    assert list(again.message_types) == list(stored.message_types)
    assert again.signature_algorithm == stored.signature_algorithm
    assert (again.url, again.description, again.etag) == (stored.url, stored.description, "e9")


def test_form_of_an_unspecified_algorithm_is_the_default_option() -> None:
    assert form_of(pb.Subscription()).signature_algorithm == ""


def test_list_request_sends_the_filters_and_the_page() -> None:
    filters, listing = list_request(
        {"message_type": "event.claim.created.v1", "enabled": "false", "page": "p2"},
        all_tenants=False,
        page_size=25,
    )
    assert filters == {"message_type": "event.claim.created.v1", "enabled": "false", "tenant": ""}
    assert (listing.page_size, listing.page_token) == (25, "p2")
    assert listing.message_type == "event.claim.created.v1"
    assert listing.HasField("enabled")
    assert listing.enabled is False


@pytest.mark.parametrize("enabled", ["", "maybe"])
def test_list_request_without_a_known_enabled_filter_asks_for_any(enabled: str) -> None:
    _, listing = list_request({"enabled": enabled}, all_tenants=False, page_size=25)
    assert not listing.HasField("enabled")


@pytest.mark.parametrize(("all_tenants", "sent"), [(True, "globex"), (False, "")])
def test_list_request_sends_the_tenant_only_for_a_token_of_every_tenant(
    all_tenants: bool, sent: str
) -> None:
    _, listing = list_request({"tenant": "globex"}, all_tenants=all_tenants, page_size=25)
    assert listing.tenant == sent


def test_field_text_is_trimmed_text_or_empty() -> None:
    fields: dict[str, object] = {"reason": "  flaky endpoint \n", "upload": b"bytes"}
    assert field_text(fields, "reason") == "flaky endpoint"
    assert field_text(fields, "upload") == ""
    assert field_text(fields, "missing") == ""


# --- call_errors --------------------------------------------------------------------------


def _status(*pairs: tuple[str, str], message: str = "invalid") -> status_pb2.Status:
    """A google.rpc.Status as the services send it, with a BadRequest detail if any."""
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message)
    if pairs:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in pairs
                ]
            )
        )
        status.details.append(detail)
    return status


def _bad_request(*pairs: tuple[str, str], message: str = "invalid") -> grpc.aio.AioRpcError:
    """A failed call carrying that status in its trailing metadata."""
    rich = rpc_status.to_status(_status(*pairs, message=message))
    return grpc.aio.AioRpcError(
        rich.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*rich.trailing_metadata),
        rich.details,
        None,
    )


@pytest.mark.parametrize(
    ("field", "prefix", "expected"),
    [
        ("subscription.url", "subscription.", "url"),
        ("subscription.message_types[2]", "subscription.", "message_types"),
        ("subscription.secret.value", "subscription.", "secret"),
        ("since", "", "since"),
        ("tenant", "subscription.", "tenant"),
    ],
)
def test_form_field_drops_the_prefix_indexes_and_subfields(
    field: str, prefix: str, expected: str
) -> None:
    assert form_field(field, prefix=prefix) == expected


def test_field_errors_maps_violations_to_form_fields_first_one_wins() -> None:
    error = _bad_request(
        ("subscription.url", "must be https"),
        ("subscription.message_types[1]", "unknown type"),
        ("subscription.message_types[3]", "duplicate"),
    )
    assert field_errors(error) == {"url": "must be https", "message_types": "unknown type"}


def test_field_errors_with_another_prefix() -> None:
    error = _bad_request(("since", "in the future"), ("subscription_id", "unknown"))
    assert field_errors(error, prefix="") == {
        "since": "in the future",
        "subscription_id": "unknown",
    }


def test_field_errors_without_violations_names_the_whole_form() -> None:
    assert field_errors(_bad_request(message="tenant mismatch")) == {"": "tenant mismatch"}
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), None, None
    )
    assert field_errors(bare) == {"": "NOT_FOUND"}


# --- csrf ---------------------------------------------------------------------------------


def test_origin_of_this_console_is_accepted() -> None:
    assert origin_matches("https://console.example:8443", "https://console.example:8443")


def test_missing_origin_is_left_to_the_token_check() -> None:
    assert origin_matches(None, "https://console.example")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://console.example",  # other scheme
        "https://console.example:444",  # other port
        "https://console.example.evil.example",
        "null",
        "",
    ],
)
def test_another_origin_is_refused(origin: str) -> None:
    assert not origin_matches(origin, "https://console.example")


# --- session ------------------------------------------------------------------------------


def _operator(subscription: set[str], delivery: set[str]) -> Operator:
    return Operator(
        token="t",
        tenant="acme",
        subscription_scopes=frozenset(subscription),
        delivery_scopes=frozenset(delivery),
    )


def test_may_accepts_a_scope_or_its_string_value() -> None:
    operator = _operator({"subscriptions:read"}, set())
    assert operator.may(Scope.SUBSCRIPTIONS_READ)
    assert operator.may("subscriptions:read")
    assert not operator.may("subscriptions:write")
    with pytest.raises(ValueError, match="nonsense"):
        operator.may("nonsense")


def test_each_scope_is_checked_against_its_own_service() -> None:
    # A delivery scope granted by the subscription service does not count, nor the reverse.
    crossed = _operator({"deliveries:read", "deliveries:write"}, {"subscriptions:read"})
    assert not crossed.may(Scope.DELIVERIES_READ)
    assert not crossed.may(Scope.DELIVERIES_WRITE)
    assert not crossed.may(Scope.SUBSCRIPTIONS_READ)
    straight = _operator({"subscriptions:write"}, {"deliveries:write"})
    assert straight.may(Scope.SUBSCRIPTIONS_WRITE)
    assert not straight.may(Scope.SUBSCRIPTIONS_READ)
    assert straight.may(Scope.DELIVERIES_WRITE)
    assert not straight.may(Scope.DELIVERIES_READ)


def test_admin_grants_every_scope_of_its_service_only() -> None:
    subscriptions_admin = _operator({"admin"}, set())
    assert subscriptions_admin.may(Scope.SUBSCRIPTIONS_READ)
    assert subscriptions_admin.may(Scope.SUBSCRIPTIONS_WRITE)
    assert not subscriptions_admin.may(Scope.DELIVERIES_READ)
    both = _operator({"admin"}, {"admin"})
    assert all(both.may(scope) for scope in Scope)


def test_all_tenants_is_the_star_tenant() -> None:
    assert Operator("t", "*", frozenset(), frozenset()).all_tenants
    assert not _operator(set(), set()).all_tenants


def test_session_key_is_created_owner_only_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "session.key"
    first = session_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Fernet(first)  # a usable key
    assert session_key(path) == first
    assert path.read_bytes() == first + b"\n"


def test_session_key_without_a_path_is_a_fresh_key() -> None:
    first = session_key(None)
    Fernet(first)
    assert session_key(None) != first
