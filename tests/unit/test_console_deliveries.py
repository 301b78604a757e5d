"""The console's delivery pages' pure parts, and its Jinja filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from console.delivery_pages import (
    PAGE_SIZE,
    ReplayForm,
    list_request,
    on_form,
    parse_since,
    redeliver_request,
    replay_errors,
    replay_form,
    replay_request,
    scheduled_text,
)
from console.formatting import FILTERS, algorithm_name, state_name, when, when_iso
from webhooks.v1 import dispatcher_service_pb2 as pb
from webhooks.v1 import subscription_service_pb2 as subscription_pb

# --- list_request -------------------------------------------------------------------------


def test_list_request_strips_the_filters_and_sends_them_with_the_page() -> None:
    query = {
        "message_id": " msg_1 ",
        "subscription_id": "sub-1",
        "state": "retrying",
        "tenant": " acme ",
        "page": "tok",
        "other": "ignored",
    }
    filters, listing = list_request(query, all_tenants=True)
    assert filters == {
        "message_id": "msg_1",
        "subscription_id": "sub-1",
        "state": "retrying",
        "tenant": "acme",
    }
    assert listing.page_size == PAGE_SIZE
    assert listing.page_token == "tok"
    assert (listing.message_id, listing.subscription_id, listing.tenant) == (
        "msg_1",
        "sub-1",
        "acme",
    )
    assert listing.state == pb.DELIVERY_STATE_RETRYING


def test_list_request_of_an_empty_query_is_the_first_unfiltered_page() -> None:
    filters, listing = list_request({}, all_tenants=False)
    assert filters == dict.fromkeys(("message_id", "subscription_id", "state", "tenant"), "")
    assert listing == pb.ListDeliveriesRequest(page_size=PAGE_SIZE)


def test_list_request_ignores_the_tenant_of_a_single_tenant_token() -> None:
    filters, listing = list_request({"tenant": "other"}, all_tenants=False)
    assert filters["tenant"] == ""
    assert listing.tenant == ""


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("pending", pb.DELIVERY_STATE_PENDING),
        ("succeeded", pb.DELIVERY_STATE_SUCCEEDED),
        ("dead", pb.DELIVERY_STATE_DEAD),
        (" dead ", pb.DELIVERY_STATE_DEAD),
        ("", pb.DELIVERY_STATE_UNSPECIFIED),
        ("exploded", pb.DELIVERY_STATE_UNSPECIFIED),
    ],
)
def test_list_request_state_filter(state: str, expected: pb.DeliveryState.ValueType) -> None:
    assert list_request({"state": state}, all_tenants=False)[1].state == expected


# --- replay form --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T14:30", datetime(2026, 3, 1, 14, 30, tzinfo=UTC)),
        (" 2026-03-01T14:30:15 ", datetime(2026, 3, 1, 14, 30, 15, tzinfo=UTC)),
        ("2026-03-01 14:30", datetime(2026, 3, 1, 14, 30, tzinfo=UTC)),
        ("2026-03-01T16:30+02:00", datetime(2026, 3, 1, 14, 30, tzinfo=UTC)),
    ],
)
def test_parse_since_reads_datetime_local_as_utc(text: str, expected: datetime) -> None:
    moment = parse_since(text)
    assert moment == expected
    assert moment.utcoffset() is not None
    assert moment.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00", "14:30"])
def test_parse_since_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_since(text)


def test_replay_form_strips_text_and_ignores_other_values() -> None:
    form = replay_form({"subscription_id": " sub-1 ", "since": 5, "tenant": " acme ", "other": "x"})
    assert form == ReplayForm(subscription_id="sub-1", since="", tenant="acme")


def test_replay_errors_of_a_complete_form_are_none() -> None:
    form = ReplayForm(subscription_id="sub-1", since="2026-03-01T14:30", tenant="acme")
    assert replay_errors(form, all_tenants=True) == {}
    assert replay_errors(ReplayForm("sub-1", "2026-03-01T14:30"), all_tenants=False) == {}


def test_replay_errors_name_each_missing_or_bad_field() -> None:
    errors = replay_errors(ReplayForm(since="soon"), all_tenants=True)
    assert set(errors) == {"subscription_id", "tenant", "since"}
    assert set(replay_errors(ReplayForm(), all_tenants=False)) == {"subscription_id", "since"}


def test_redeliver_request_sends_the_tenant_only_for_every_tenant_tokens() -> None:
    delivery = pb.Delivery(id="d1", message_id="msg_1", subscription_id="sub-1", tenant="acme")
    assert redeliver_request(delivery, all_tenants=True) == pb.RedeliverEventRequest(
        message_id="msg_1", subscription_id="sub-1", tenant="acme"
    )
    assert redeliver_request(delivery, all_tenants=False) == pb.RedeliverEventRequest(
        message_id="msg_1", subscription_id="sub-1"
    )


def test_replay_request_sends_since_as_a_utc_timestamp() -> None:
    form = ReplayForm(subscription_id="sub-1", since="2026-03-01T14:30", tenant="acme")
    request = replay_request(form, all_tenants=True)
    assert request.subscription_id == "sub-1"
    assert request.message_id == ""
    assert request.tenant == "acme"
    assert request.since.seconds == int(datetime(2026, 3, 1, 14, 30, tzinfo=UTC).timestamp())
    assert replay_request(form, all_tenants=False).tenant == ""


def test_replay_request_of_an_unreadable_time_raises() -> None:
    with pytest.raises(ValueError, match=r".+"):
        replay_request(ReplayForm(subscription_id="sub-1", since="nope"), all_tenants=False)


def test_on_form_keeps_the_form_fields_and_says_the_rest_about_the_whole_form() -> None:
    shown = on_form(
        {"since": "in the future", "message_id": "unknown", "": "refused", "tenant": "bad"}
    )
    assert shown == {"since": "in the future", "tenant": "bad", "": "unknown refused"}
    assert on_form({"subscription_id": "unknown"}) == {"subscription_id": "unknown"}
    assert on_form({}) == {}


def test_scheduled_text() -> None:
    assert scheduled_text([]).startswith("Nothing was scheduled again")
    assert scheduled_text(["d1"]) == "Scheduled again: 1 delivery (d1)."
    assert scheduled_text(["d1", "d2"]) == "Scheduled again: 2 deliveries (d1, d2)."


# --- formatting ---------------------------------------------------------------------------


def _stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def test_when_formats_a_time_in_utc_and_an_unset_one_as_a_dash() -> None:
    moment = int(datetime(2026, 12, 5, 15, 12, 3, tzinfo=UTC).timestamp())
    assert when(_stamp(moment, 999_000_000)) == "2026-12-05 15:12:03 UTC"
    assert when(Timestamp()) == "—"
    assert when(_stamp(0, 1)) == "1970-01-01 00:00:00 UTC"


def test_when_iso_is_zulu_and_empty_when_unset() -> None:
    moment = int(datetime(2026, 12, 5, 15, 12, 3, tzinfo=UTC).timestamp())
    assert when_iso(_stamp(moment)) == "2026-12-05T15:12:03Z"
    assert when_iso(_stamp(moment, 500_000_000)) == "2026-12-05T15:12:03.500000Z"
    assert when_iso(Timestamp()) == ""


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (pb.DELIVERY_STATE_UNSPECIFIED, "unspecified"),
        (pb.DELIVERY_STATE_PENDING, "pending"),
        (pb.DELIVERY_STATE_RETRYING, "retrying"),
        (pb.DELIVERY_STATE_SUCCEEDED, "succeeded"),
        (pb.DELIVERY_STATE_DEAD, "dead"),
    ],
)
def test_state_name(state: pb.DeliveryState.ValueType, name: str) -> None:
    assert state_name(state) == name


def test_algorithm_name() -> None:
    assert algorithm_name(subscription_pb.SIGNATURE_ALGORITHM_UNSPECIFIED) == (
        "default (ECDSA P-256)"
    )
    assert algorithm_name(subscription_pb.SIGNATURE_ALGORITHM_ECDSA_P256_SHA256) == (
        "ECDSA P-256, SHA-256"
    )
    assert algorithm_name(subscription_pb.SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256) == (
        "RSA PKCS#1, SHA-256"
    )
    unknown = subscription_pb.SignatureAlgorithm.ValueType(99)
    assert algorithm_name(unknown) == "99"


def test_filters_registers_each_function_by_name() -> None:
    assert {
        "when": when,
        "when_iso": when_iso,
        "state_name": state_name,
        "algorithm_name": algorithm_name,
    } == FILTERS
