"""Bearer-token authentication: the tokens file, the metadata, and what a caller may do."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_common.auth import (
    ALL_TENANTS,
    Caller,
    Scope,
    TokensFileError,
    TokenStore,
    hash_token,
    validate_tenant,
)
from service_common.errors import InvalidArgument, PermissionDenied, Unauthenticated

ACME_TOKEN = "acme-writer-token"
PLATFORM_TOKEN = "platform-admin-token"
WriteTokens = Callable[[object], Path]


def entry(token: str, tenant: str, scopes: list[str]) -> dict[str, Any]:
    return {"sha256": hash_token(token), "tenant": tenant, "scopes": scopes}


@pytest.fixture
def write_tokens(tmp_path: Path) -> WriteTokens:
    """Writes a tokens file holding `content` (serialized as JSON unless it is text)."""

    def write(content: object) -> Path:
        path = tmp_path / "tokens.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    return write


@pytest.fixture
def store(write_tokens: WriteTokens) -> TokenStore:
    return TokenStore.from_file(
        write_tokens(
            {
                "tokens": [
                    entry(ACME_TOKEN, "acme", ["subscriptions:read", "subscriptions:write"]),
                    entry(PLATFORM_TOKEN, "*", ["admin"]),
                ]
            }
        )
    )


def bearer(token: str) -> list[tuple[str, str | bytes]]:
    return [("authorization", f"Bearer {token}")]


# The tokens file


def test_hash_token_is_the_hex_sha256_of_the_token() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()


def test_a_valid_tokens_file_yields_callers_with_their_tenant_and_scopes(
    store: TokenStore,
) -> None:
    assert len(store) == 2
    assert store.authenticate(bearer(ACME_TOKEN)) == Caller(
        tenant="acme", scopes=frozenset({Scope.SUBSCRIPTIONS_READ, Scope.SUBSCRIPTIONS_WRITE})
    )
    platform = store.authenticate(bearer(PLATFORM_TOKEN))
    assert platform == Caller(tenant=ALL_TENANTS, scopes=frozenset({Scope.ADMIN}))
    assert platform.all_tenants


def test_every_documented_scope_is_accepted_in_the_tokens_file(
    write_tokens: WriteTokens,
) -> None:
    scopes = [
        "publish",
        "subscriptions:read",
        "subscriptions:write",
        "deliveries:read",
        "deliveries:write",
        "admin",
    ]
    store = TokenStore.from_file(write_tokens({"tokens": [entry("t", "acme", scopes)]}))
    assert store.authenticate(bearer("t")).scopes == frozenset(Scope)


def test_a_tokens_file_without_tokens_refuses_every_caller(write_tokens: WriteTokens) -> None:
    store = TokenStore.from_file(write_tokens({"tokens": []}))
    assert len(store) == 0
    with pytest.raises(Unauthenticated):
        store.authenticate(bearer(ACME_TOKEN))


GOOD = entry(ACME_TOKEN, "acme", ["subscriptions:read"])
MALFORMED_FILES: dict[str, object] = {
    "not json": '{"tokens": [',
    "empty file": "",
    "a list at the top": [GOOD],
    "no tokens key": {},
    "unknown top-level key": {"tokens": [GOOD], "version": 2},
    "unknown scope": {"tokens": [{**GOOD, "scopes": ["subscriptions:delete"]}]},
    "no scopes": {"tokens": [{**GOOD, "scopes": []}]},
    "scopes as a string": {"tokens": [{**GOOD, "scopes": "admin"}]},
    "sha256 too short": {"tokens": [{**GOOD, "sha256": "ab" * 31}]},
    "sha256 upper-case": {"tokens": [{**GOOD, "sha256": hash_token(ACME_TOKEN).upper()}]},
    "sha256 not hex": {"tokens": [{**GOOD, "sha256": "z" * 64}]},
    "sha256 with a newline": {"tokens": [{**GOOD, "sha256": hash_token(ACME_TOKEN) + "\n"}]},
    "the token instead of its hash": {"tokens": [{**GOOD, "sha256": ACME_TOKEN}]},
    "tenant with a space": {"tokens": [{**GOOD, "tenant": "ac me"}]},
    "empty tenant": {"tokens": [{**GOOD, "tenant": ""}]},
    "tenant starting with a dash": {"tokens": [{**GOOD, "tenant": "-acme"}]},
    "tenant too long": {"tokens": [{**GOOD, "tenant": "a" * 65}]},
    "tenant pattern": {"tokens": [{**GOOD, "tenant": "acme*"}]},
    "missing tenant": {"tokens": [{"sha256": GOOD["sha256"], "scopes": GOOD["scopes"]}]},
    "unknown entry key": {"tokens": [{**GOOD, "token": ACME_TOKEN}]},
}


@pytest.mark.parametrize("content", MALFORMED_FILES.values(), ids=MALFORMED_FILES.keys())
def test_a_malformed_tokens_file_is_refused_at_start_up_naming_the_file(
    write_tokens: WriteTokens, content: object
) -> None:
    path = write_tokens(content)
    with pytest.raises(TokensFileError, match="is malformed") as refused:
        TokenStore.from_file(path)
    assert str(path) in str(refused.value)


def test_a_tokens_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(TokensFileError, match="is malformed"):
        TokenStore.from_file(path)


def test_a_missing_tokens_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(TokensFileError, match="cannot read tokens file") as refused:
        TokenStore.from_file(path)
    assert str(path) in str(refused.value)


# The authorization metadata


@pytest.mark.parametrize(
    "metadata",
    [None, [], [("x-request-id", "42"), ("user-agent", "grpc-python")]],
    ids=["none", "empty", "other keys only"],
)
def test_a_call_without_authorization_metadata_is_unauthenticated(
    store: TokenStore, metadata: list[tuple[str, str | bytes]] | None
) -> None:
    with pytest.raises(Unauthenticated, match="missing 'authorization: Bearer <token>'"):
        store.authenticate(metadata)


def test_two_authorization_entries_are_refused_even_when_both_are_valid(
    store: TokenStore,
) -> None:
    with pytest.raises(Unauthenticated, match="more than one"):
        store.authenticate(bearer(ACME_TOKEN) + bearer(PLATFORM_TOKEN))


@pytest.mark.parametrize(
    "value",
    [
        f"Basic {ACME_TOKEN}",
        ACME_TOKEN,
        "Bearer",
        "Bearer ",
        f"Bearer{ACME_TOKEN}",
        f"Bearer {ACME_TOKEN} extra",
        f"Token {ACME_TOKEN}",
        # A byte that is no UTF-8, as aiohttp hands it on (a surrogate), and non-ASCII text.
        "Bearer \udcff\udcfe",
        f"Bearer {ACME_TOKEN}\u00e9",
    ],
)
def test_anything_but_one_bearer_token_is_refused(store: TokenStore, value: str) -> None:
    with pytest.raises(Unauthenticated, match="must be 'Bearer <token>'"):
        store.authenticate([("authorization", value)])


def test_a_token_past_the_length_limit_is_refused_as_too_long(store: TokenStore) -> None:
    with pytest.raises(Unauthenticated, match="longer than 4096 characters"):
        store.authenticate([("authorization", "Bearer " + "x" * 5000)])


@pytest.mark.parametrize(
    "value",
    [
        f"bearer {ACME_TOKEN}",
        f"BEARER {ACME_TOKEN}",
        f"BeArEr {ACME_TOKEN}",
        f"  Bearer   {ACME_TOKEN}  ",
        f"Bearer\t{ACME_TOKEN}",
    ],
)
def test_the_bearer_scheme_is_case_insensitive_and_whitespace_tolerant(
    store: TokenStore, value: str
) -> None:
    assert store.authenticate([("authorization", value)]).tenant == "acme"


def test_the_metadata_key_is_matched_case_insensitively(store: TokenStore) -> None:
    caller = store.authenticate([("Authorization", f"Bearer {ACME_TOKEN}")])
    assert caller.tenant == "acme"


def test_a_token_nobody_issued_is_unauthenticated(store: TokenStore) -> None:
    with pytest.raises(Unauthenticated, match="not valid"):
        store.authenticate(bearer("nobody-issued-this"))


def test_a_token_hash_is_not_accepted_as_the_token(store: TokenStore) -> None:
    with pytest.raises(Unauthenticated):
        store.authenticate(bearer(hash_token(ACME_TOKEN)))


def test_bytes_metadata_values_are_read_as_text(store: TokenStore) -> None:
    caller = store.authenticate([("authorization", f"Bearer {ACME_TOKEN}".encode())])
    assert caller.tenant == "acme"


def test_undecodable_bytes_are_unauthenticated_not_a_crash(store: TokenStore) -> None:
    with pytest.raises(Unauthenticated):
        store.authenticate([("authorization", b"Bearer \xff\xfe\xfd")])


def test_tokens_longer_than_4096_characters_are_refused_even_when_listed(
    write_tokens: WriteTokens,
) -> None:
    longest, too_long = "t" * 4096, "t" * 4097
    store = TokenStore.from_file(
        write_tokens(
            {"tokens": [entry(longest, "acme", ["admin"]), entry(too_long, "globex", ["admin"])]}
        )
    )
    assert store.authenticate(bearer(longest)).tenant == "acme"
    with pytest.raises(Unauthenticated):
        store.authenticate(bearer(too_long))


# What a caller may do


def caller(tenant: str, *scopes: Scope) -> Caller:
    return Caller(tenant=tenant, scopes=frozenset(scopes))


def test_a_caller_has_exactly_its_scopes() -> None:
    reader = caller("acme", Scope.SUBSCRIPTIONS_READ)
    assert reader.has(Scope.SUBSCRIPTIONS_READ)
    assert not any(reader.has(scope) for scope in Scope if scope is not Scope.SUBSCRIPTIONS_READ)
    reader.require(Scope.SUBSCRIPTIONS_READ)
    with pytest.raises(PermissionDenied, match="'subscriptions:write' scope"):
        reader.require(Scope.SUBSCRIPTIONS_WRITE)


@pytest.mark.parametrize("tenant", ["acme", ALL_TENANTS])
def test_admin_implies_every_scope(tenant: str) -> None:
    admin = caller(tenant, Scope.ADMIN)
    for scope in Scope:
        assert admin.has(scope)
        admin.require(scope)


def test_a_token_for_every_tenant_must_name_a_valid_tenant_to_write() -> None:
    operator = caller(ALL_TENANTS, Scope.SUBSCRIPTIONS_WRITE)
    assert operator.tenant_to_write("globex", field="subscription.tenant") == "globex"
    for requested, why in (
        ("", "required for a token of every tenant"),
        (ALL_TENANTS, "must be 1 to 64"),
        ("no spaces", "must be 1 to 64"),
        ("a" * 65, "must be 1 to 64"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            operator.tenant_to_write(requested, field="subscription.tenant")
        [violation] = refused.value.violations
        assert violation.field == "subscription.tenant"
        assert why in violation.description


def test_a_tenant_token_writes_to_its_own_tenant_only() -> None:
    acme = caller("acme", Scope.SUBSCRIPTIONS_WRITE)
    assert acme.tenant_to_write("", field="subscription.tenant") == "acme"
    assert acme.tenant_to_write("acme", field="subscription.tenant") == "acme"
    with pytest.raises(PermissionDenied):
        acme.tenant_to_write("globex", field="subscription.tenant")


def test_a_token_for_every_tenant_reads_every_tenant_or_the_one_it_names() -> None:
    operator = caller(ALL_TENANTS, Scope.SUBSCRIPTIONS_READ)
    assert operator.tenant_to_read("") is None
    assert operator.tenant_to_read("globex") == "globex"
    assert operator.may_see("acme")
    assert operator.may_see("globex")


def test_a_tenant_token_reads_its_own_tenant_only() -> None:
    acme = caller("acme", Scope.SUBSCRIPTIONS_READ)
    assert not acme.all_tenants
    assert acme.tenant_to_read("") == "acme"
    assert acme.tenant_to_read("acme") == "acme"
    with pytest.raises(PermissionDenied):
        acme.tenant_to_read("globex")
    with pytest.raises(PermissionDenied):
        acme.tenant_to_read(ALL_TENANTS)
    assert acme.may_see("acme")
    assert not acme.may_see("globex")


def test_a_tenant_admin_is_still_confined_to_its_tenant() -> None:
    admin = caller("acme", Scope.ADMIN)
    assert admin.tenant_to_read("") == "acme"
    with pytest.raises(PermissionDenied):
        admin.tenant_to_write("globex", field="subscription.tenant")
    with pytest.raises(PermissionDenied):
        admin.tenant_to_read("globex")


@pytest.mark.parametrize("tenant", ["acme", "a", "ACME-2.eu_west", "0" + "a" * 63])
def test_tenant_ids_of_letters_digits_dots_underscores_and_dashes_are_valid(tenant: str) -> None:
    assert validate_tenant(tenant, field="tenant") == tenant


@pytest.mark.parametrize(
    "tenant", ["", "*", ".acme", "_acme", "ac me", "acme\n", "a" * 65, "acmé", "acme/other"]
)
def test_other_tenant_ids_are_invalid_arguments(tenant: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate_tenant(tenant, field="tenant")
    assert [v.field for v in refused.value.violations] == ["tenant"]
