"""Page tokens for ListSubscriptions: a store cursor plus the filters it was issued for."""

from __future__ import annotations

import re

from service_common.page_tokens import decode_page_token as _decode
from service_common.page_tokens import encode_page_token as _encode
from subscription_service.domain import ListQuery
from subscription_service.store import Cursor

__all__ = ["decode_page_token", "encode_page_token"]

# The ids SubscriptionStore.create gives: "sub_" and a uuid4 in hex. A token's id goes into
# a query, so nothing else gets that far.
_ID_SHAPE = re.compile(r"sub_[0-9a-f]{32}")


def _filters(query: ListQuery) -> list[object]:
    return [query.tenant, query.message_type, query.enabled]


def encode_page_token(cursor: Cursor, query: ListQuery) -> str:
    return _encode((cursor.create_time, cursor.id), _filters(query))


def decode_page_token(token: str, query: ListQuery) -> Cursor | None:
    position = _decode(token, _filters(query), id_shape=_ID_SHAPE)
    return None if position is None else Cursor(*position)
