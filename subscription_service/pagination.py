"""Page tokens for ListSubscriptions: a store cursor plus the filters it was issued for."""

from __future__ import annotations

from service_common.page_tokens import decode_page_token as _decode
from service_common.page_tokens import encode_page_token as _encode
from subscription_service.domain import ListQuery
from subscription_service.store import Cursor

__all__ = ["decode_page_token", "encode_page_token"]


def _filters(query: ListQuery) -> list[object]:
    return [query.tenant, query.message_type, query.enabled]


def encode_page_token(cursor: Cursor, query: ListQuery) -> str:
    return _encode((cursor.create_time, cursor.id), _filters(query))


def decode_page_token(token: str, query: ListQuery) -> Cursor | None:
    position = _decode(token, _filters(query))
    return None if position is None else Cursor(*position)
