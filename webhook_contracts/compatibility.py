"""Does a new set of contracts still accept everything the released set accepted?

A change is breaking when the new contract could reject a payload that the released one
accepted: a removed messageType, a field that became required, a narrower type, a removed
enum value, a new or changed pattern/format, a tighter bound, closed additional fields, a
removed field of a closed object. Loosening any of these is fine, and so is a new
messageType. A breaking change needs a new messageType version (``.v2``) instead.

The check is conservative: keywords it cannot reason about (``oneOf``, ``not``...) count
as breaking whenever they change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .documents import ContractDocuments, load_documents
from .ids import name_of, schema_id
from .locations import pointer_tokens
from .references import referenced_documents
from .registry import Registry
from .released import read_release
from .shapes import ALL_TYPES, ANY, Shape, covers_type, shape_of

__all__ = ["BreakingChange", "Change", "check_compatibility"]

ContractSource = ContractDocuments | Registry | Path


class Change(StrEnum):
    REMOVED_TYPE = "message type removed"
    NO_LONGER_ACCEPTED = "no longer accepted"
    TYPE_NARROWED = "type narrowed"
    VALUES_RESTRICTED = "values restricted"
    REQUIRED_ADDED = "became required"
    CLOSED = "closed to undeclared fields"
    PATTERN_ADDED = "pattern added"
    FORMAT_ADDED = "format added"
    BOUND_TIGHTENED = "bound tightened"
    UNCOMPARABLE = "uncomparable keyword changed"


@dataclass(frozen=True)
class BreakingChange:
    """One way in which a new contract rejects what the released one accepted."""

    message_type: str
    path: str
    change: Change
    detail: str

    def __str__(self) -> str:
        return f"{self.message_type}: {self.path or '(body)'}: {self.change}: {self.detail}"


def check_compatibility(old: ContractSource, new: ContractSource) -> list[BreakingChange]:
    """Every breaking change from ``old`` to ``new``.

    Each side is a ``ContractDocuments``, a ``Registry``, a contracts directory or a release
    snapshot file.
    """
    before, after = _documents(old), _documents(new)
    changes: list[BreakingChange] = []
    for message_type in sorted(before.events):
        if message_type not in after.events:
            changes.append(
                BreakingChange(message_type, "", Change.REMOVED_TYPE, "its contract is gone")
            )
            continue
        old_shape = _body_shape(before, message_type)
        new_shape = _body_shape(after, message_type)
        changes.extend(
            BreakingChange(message_type, path, change, detail)
            for path, change, detail in _compare(old_shape, new_shape, "")
        )
    return changes


def _documents(source: ContractSource) -> ContractDocuments:
    if isinstance(source, ContractDocuments):
        return source
    if isinstance(source, Registry):
        return source.documents
    return load_documents(source) if source.is_dir() else read_release(source)


def _body_shape(documents: ContractDocuments, message_type: str) -> Shape:
    available = {message_type, *referenced_documents(documents, message_type)}

    def resolve(ref: str) -> object:
        name = name_of(ref)
        if name not in available:
            raise ValueError(f"{message_type}: unresolvable $ref {ref}")
        node: object = documents.get(name)
        _, _, pointer = ref.partition("#")
        for key in pointer_tokens(pointer):
            node = node[key] if isinstance(node, dict) else None
        return node

    return shape_of({"$ref": schema_id(message_type)}, resolve)


Finding = tuple[str, Change, str]


def _compare(old: Shape, new: Shape, path: str) -> Iterator[Finding]:
    if old.never or new in (ANY, old):
        return
    if new.never:
        yield path, Change.NO_LONGER_ACCEPTED, "the released contract accepted a value here"
        return
    yield from _compare_types(old, new, path)
    yield from _compare_values(old, new, path)
    yield from _compare_strings(old, new, path)
    yield from _compare_bounds(old, new, path)
    if covers_type(old.types, "object"):
        yield from _compare_objects(old, new, path)
    if covers_type(old.types, "array") and (old.items or new.items):
        yield from _compare(old.items or ANY, new.items or ANY, f"{path}[]")
    for keyword in sorted(new.opaque - old.opaque):
        yield path, Change.UNCOMPARABLE, keyword


def _compare_types(old: Shape, new: Shape, path: str) -> Iterator[Finding]:
    lost = sorted(
        kind
        for kind in (old.types if old.types is not None else ALL_TYPES)
        if not covers_type(new.types, kind) and covers_type(old.types, kind)
    )
    if "number" in lost and "integer" in lost:
        lost.remove("integer")
    if lost:
        yield path, Change.TYPE_NARROWED, f"{', '.join(lost)} no longer accepted"


def _compare_values(old: Shape, new: Shape, path: str) -> Iterator[Finding]:
    if new.values is None:
        return
    if old.values is None:
        yield path, Change.VALUES_RESTRICTED, f"now only {', '.join(sorted(new.values))}"
    elif removed := old.values - new.values:
        yield path, Change.VALUES_RESTRICTED, f"{', '.join(sorted(removed))} removed"


def _compare_strings(old: Shape, new: Shape, path: str) -> Iterator[Finding]:
    for pattern in sorted(new.patterns - old.patterns):
        yield path, Change.PATTERN_ADDED, pattern
    for name in sorted(new.formats - old.formats):
        yield path, Change.FORMAT_ADDED, name


def _compare_bounds(old: Shape, new: Shape, path: str) -> Iterator[Finding]:
    for key, value in sorted(new.lower.items()):
        if key not in old.lower or value > old.lower[key]:
            yield path, Change.BOUND_TIGHTENED, f"{key} {old.lower.get(key)} -> {value}"
    for key, value in sorted(new.upper.items()):
        if key not in old.upper or value < old.upper[key]:
            yield path, Change.BOUND_TIGHTENED, f"{key} {old.upper.get(key)} -> {value}"


def _compare_objects(old: Shape, new: Shape, path: str) -> Iterator[Finding]:
    for name in sorted(new.required - old.required):
        yield _join(path, name), Change.REQUIRED_ADDED, "a field that may be absent today"
    for name in sorted(old.properties.keys() | new.properties.keys()):
        yield from _compare(old.field_shape(name), new.field_shape(name), _join(path, name))
    old_other, new_other = old.additional or ANY, new.additional or ANY
    if new_other.never and not old_other.never:
        yield path, Change.CLOSED, "fields it does not declare are now rejected"
    else:
        yield from _compare(old_other, new_other, _join(path, "*"))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
