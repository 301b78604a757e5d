"""Test data shared by the contract and receiver tests: the published catalog and valid
values built from it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

# The event types as the platform publishes them, kept verbatim: the contracts are checked
# against it, so the tests depend on nothing outside the repository.
PUBLISHED_CATALOG: dict[str, Any] = json.loads(
    Path(__file__).with_name("published_catalog.json").read_text(encoding="utf-8")
)
PUBLISHED_TYPES: dict[str, dict[str, Any]] = {
    event["messageType"]: event for event in PUBLISHED_CATALOG["eventTypes"]
}

EXAMPLE_TYPE = "event.accountAmountTotalFees.updated.v1"
UNDOCUMENTED_TYPE = "event.note.created.v1"

# Valid details for the types whose fields are documented, following their published field
# lists; every other type is valid with its messageType alone.
DOCUMENTED_VALID_DETAILS: dict[str, dict[str, Any]] = {
    "event.claim.created.v1": {
        "claimRef": "CLAIM-2021-0042",
        "receeveClaimRef": "rcv_8f14e45f",
        "amount": 50100,
        "currency": "EUR",
        "dueDate": "2021-11-30",
    },
    "event.claimDebtPayment.processing.v1": {
        "claimRef": "CLAIM-2021-0042",
        "receeveClaimRef": "rcv_8f14e45f",
        "providerName": "Trustly",
        "amount": 50100,
        "currency": "SEK",
        "trackingId": "trk-77",
    },
}


def valid_payload(message_type: str) -> dict[str, Any]:
    """A valid payload of ``message_type``, a fresh copy each call."""
    published = PUBLISHED_TYPES.get(message_type, {})
    if "documentedExample" in published:
        payload: dict[str, Any] = copy.deepcopy(published["documentedExample"]["payload"])
        return payload
    details = {"messageType": message_type, **DOCUMENTED_VALID_DETAILS.get(message_type, {})}
    return {
        "details": copy.deepcopy(details),
        "messageId": "09feeb6f-350a-430a-a040-cd1c558cbc91",
        "timestamp": "2021-10-14T15:33:16.848Z",
    }


def documented_fields() -> list[tuple[str, str, str]]:
    """``(messageType, field, documented type)`` for every field of a published field list."""
    return [
        (name, field, described)
        for name, event in PUBLISHED_TYPES.items()
        for field, described in event.get("documentedDetails", {}).get("types", {}).items()
    ]
