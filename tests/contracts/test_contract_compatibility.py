"""The compatibility check: the contracts may accept more within a version, never less."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from webhook_contracts import (
    BreakingChange,
    Change,
    ContractDocuments,
    check_compatibility,
    contracts_dir,
    load_documents,
    read_release,
    released_path,
)
from webhook_contracts.cli import main

Documents = dict[str, dict[str, Any]]
Edit = Callable[[Documents, Documents], object]
RELEASED = load_documents(contracts_dir())
CLAIM = "event.claim.created.v1"
NOTE = "event.note.created.v1"


def edited(edit: Edit, base: ContractDocuments = RELEASED) -> ContractDocuments:
    shared: Documents = {name: copy.deepcopy(dict(doc)) for name, doc in base.shared.items()}
    events: Documents = {name: copy.deepcopy(dict(doc)) for name, doc in base.events.items()}
    edit(shared, events)
    return ContractDocuments(shared=shared, events=events)


def details_of(events: Documents, name: str) -> dict[str, Any]:
    details: dict[str, Any] = events[name]["$defs"]["details"]
    return details


def claim_details(events: Documents) -> dict[str, Any]:
    return details_of(events, CLAIM)


def money_as_any_number(shared: Documents, events: Documents) -> None:
    # A base in which money is any number, so that narrowing it to integers can be seeded.
    shared["types"]["$defs"]["minorUnits"]["type"] = "number"


def with_enum(shared: Documents, events: Documents) -> None:
    claim_details(events)["properties"]["channel"] = {"enum": ["email", "sms", "letter"]}


def test_the_contracts_accept_everything_the_released_set_accepted() -> None:
    changes = check_compatibility(released_path(), contracts_dir())
    assert changes == [], "\n".join(map(str, changes))


def test_the_released_set_is_kept_in_the_repository() -> None:
    released = read_release(released_path())
    assert set(released.events) == set(RELEASED.events)


BREAKING: list[tuple[str, Edit, str, str, Change]] = [
    (
        "a documented optional field becomes required",
        lambda shared, events: claim_details(events)["required"].append("accountReference"),
        CLAIM,
        "payload.details.accountReference",
        Change.REQUIRED_ADDED,
    ),
    (
        "an open detail field gets a type",
        lambda shared, events: details_of(events, NOTE)["properties"].update(
            noteId={"type": "string"}
        ),
        NOTE,
        "payload.details.noteId",
        Change.TYPE_NARROWED,
    ),
    (
        "money goes from number to integer",
        lambda shared, events: shared["types"]["$defs"]["minorUnits"].update(type="integer"),
        CLAIM,
        "payload.details.amount",
        Change.TYPE_NARROWED,
    ),
    (
        "a pattern is added",
        lambda shared, events: shared["payload"]["properties"]["messageId"].update(
            pattern="^[0-9a-f-]{36}$"
        ),
        NOTE,
        "payload.messageId",
        Change.PATTERN_ADDED,
    ),
    (
        "a format is added",
        lambda shared, events: shared["details"]["properties"]["claimRef"].update(format="uuid"),
        CLAIM,
        "payload.details.claimRef",
        Change.FORMAT_ADDED,
    ),
    (
        "a minimum is added",
        lambda shared, events: shared["types"]["$defs"]["minorUnits"].update(minimum=0),
        CLAIM,
        "payload.details.amount",
        Change.BOUND_TIGHTENED,
    ),
    (
        "a maximum length shrinks",
        lambda shared, events: shared["types"]["$defs"]["timestamp"].update(maxLength=20),
        NOTE,
        "payload.timestamp",
        Change.BOUND_TIGHTENED,
    ),
    (
        "the details are closed",
        lambda shared, events: details_of(events, NOTE).update(additionalProperties=False),
        NOTE,
        "payload.details",
        Change.CLOSED,
    ),
    (
        "a field of a closed object is removed",
        lambda shared, events: shared["payload"]["$defs"]["user"]["properties"].pop("poolId"),
        NOTE,
        "payload.user.poolId",
        Change.NO_LONGER_ACCEPTED,
    ),
    (
        "a message type is removed",
        lambda shared, events: events.pop(NOTE),
        NOTE,
        "",
        Change.REMOVED_TYPE,
    ),
    (
        "a keyword the check cannot reason about appears",
        lambda shared, events: claim_details(events).update(
            oneOf=[{"required": ["accountReference"]}, {"required": ["claimRef"]}]
        ),
        CLAIM,
        "payload.details",
        Change.UNCOMPARABLE,
    ),
]


@pytest.mark.parametrize(
    ("edit", "message_type", "path", "change"),
    [case[1:] for case in BREAKING],
    ids=[case[0] for case in BREAKING],
)
def test_a_change_that_rejects_what_was_accepted_is_breaking(
    edit: Edit, message_type: str, path: str, change: Change
) -> None:
    base = RELEASED
    if change is Change.TYPE_NARROWED and "money" in path + message_type:
        pass
    if path == "payload.details.amount" and change is Change.TYPE_NARROWED:
        # Start from money typed as any number, then narrow it back to integers.
        base = edited(
            lambda shared, events: shared["types"]["$defs"]["minorUnits"].update(type="number")
        )
    changes = check_compatibility(base, edited(edit, base))
    assert BreakingChange(message_type, path, change, changes[0].detail) in [
        BreakingChange(c.message_type, c.path, c.change, changes[0].detail) for c in changes
    ], changes


def test_removing_an_enum_value_is_breaking_and_adding_one_is_not() -> None:
    base = edited(with_enum)
    removed = edited(
        lambda shared, events: claim_details(events)["properties"]["channel"]["enum"].remove("sms"),
        base,
    )
    added = edited(
        lambda shared, events: claim_details(events)["properties"]["channel"]["enum"].append(
            "call"
        ),
        base,
    )
    (change,) = check_compatibility(base, removed)
    assert (change.message_type, change.path, change.change) == (
        CLAIM,
        "payload.details.channel",
        Change.VALUES_RESTRICTED,
    )
    assert '"sms"' in change.detail
    assert check_compatibility(base, added) == []


NOT_BREAKING: list[tuple[str, Edit]] = [
    (
        "a required field becomes optional",
        lambda shared, events: claim_details(events)["required"].remove("dueDate"),
    ),
    (
        "a pattern is removed",
        lambda shared, events: shared["types"]["$defs"]["currencyCode"].pop("pattern"),
    ),
    ("a format is removed", lambda shared, events: shared["types"]["$defs"]["date"].pop("format")),
    (
        "a bound is removed",
        lambda shared, events: shared["types"]["$defs"]["timestamp"].pop("maxLength"),
    ),
    (
        "integer widens to number",
        lambda shared, events: shared["types"]["$defs"]["minorUnits"].update(type="number"),
    ),
    ("an object is opened", lambda shared, events: shared["payload"].pop("additionalProperties")),
    (
        "a description changes",
        lambda shared, events: claim_details(events).update(description="Changed."),
    ),
    (
        "a message type is added",
        lambda shared, events: events.update(
            {"event.note.created.v2": copy.deepcopy(events[NOTE])}
        ),
    ),
    (
        "an untyped field is declared",
        lambda shared, events: details_of(events, NOTE)["properties"].update(
            noteId={"description": "The note."}
        ),
    ),
]


@pytest.mark.parametrize(
    "edit", [case[1] for case in NOT_BREAKING], ids=[case[0] for case in NOT_BREAKING]
)
def test_a_change_that_only_accepts_more_is_not_breaking(edit: Edit) -> None:
    assert check_compatibility(RELEASED, edited(edit)) == []


def write_contracts(directory: Path, documents: ContractDocuments) -> None:
    for name, document in documents.shared.items():
        (directory / f"{name}.json").write_text(json.dumps(document), encoding="utf-8")
    for stale in (directory / "events").glob("*.json"):
        stale.unlink()
    for name, document in documents.events.items():
        (directory / "events" / f"{name}.json").write_text(json.dumps(document), encoding="utf-8")


def test_the_check_command_fails_on_a_seeded_breaking_change_naming_type_and_path(
    contracts_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breaking = edited(
        lambda shared, events: claim_details(events)["required"].append("accountReference")
    )
    write_contracts(contracts_copy, breaking)
    assert main(["--contracts", str(contracts_copy), "check"]) == 1
    output = capsys.readouterr().out
    assert "event.claim.created.v1: payload.details.accountReference: became required" in output


def test_release_refuses_a_breaking_change_unless_told_and_then_the_check_passes(
    contracts_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_contracts(contracts_copy, edited(lambda shared, events: events.pop(NOTE)))
    arguments = ["--contracts", str(contracts_copy)]
    assert main([*arguments, "release"]) == 1
    assert NOTE in read_release(released_path(contracts_copy)).events
    assert main([*arguments, "release", "--allow-breaking"]) == 0
    assert NOTE not in read_release(released_path(contracts_copy)).events
    assert main([*arguments, "check"]) == 0
    assert "compatible: 76 contracts" in capsys.readouterr().out


def test_the_check_runs_as_a_module_from_a_fresh_checkout() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "webhook_contracts", "check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "compatible: 77 contracts" in completed.stdout
