"""The platform's signing keys: files in a directory, rotated, and published as a JWKS.

Keys live as files in one directory, which every process that signs may share:

    <directory>/keys.json      the index: every published key with its algorithm, status,
                               times and public key (PEM)
    <directory>/<key id>.pem   the private key of each active key: PKCS#8 PEM, mode 0600
    <directory>/.lock          held (flock) by whoever creates or rotates keys

Files are replaced by rename, never rewritten in place, so a reader sees the old index or
the new one, never half of one. A retired key loses its private file at once (it never signs
again) but its public key stays published until the retention after its retirement passes,
so receivers can still check deliveries signed before the rotation.

A key's id is its RFC 7638 thumbprint (`webhook_wire.keys.key_id`): URL-safe, unique, and
derived from the key, so a receiver using the kit computes the same id the `webhook-key-id`
header carries, and a private key file that does not match its index entry is caught.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dispatcher_service.signing import (
    DEFAULT_ALGORITHM,
    Signature,
    SignatureAlgorithm,
    signature_of,
)
from webhook_wire.keys import (
    PrivateKey,
    generate_ecdsa_key,
    generate_rsa_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_jwk,
    public_key_pem,
)

__all__ = [
    "DEFAULT_RETIRED_KEY_RETENTION",
    "PUBLIC_KEYS_CACHE_CONTROL",
    "PUBLIC_KEYS_MAX_AGE_SECONDS",
    "KeyRing",
    "KeyRingError",
    "PublicKey",
    "to_jwks",
]

log = logging.getLogger(__name__)

_GENERATORS: dict[SignatureAlgorithm, Callable[[], PrivateKey]] = {
    SignatureAlgorithm.ECDSA_P256_SHA256: generate_ecdsa_key,
    SignatureAlgorithm.RSA_PKCS1_SHA256: generate_rsa_key,
}
# Retries span about a day; a week more lets receivers that queue deliveries verify late.
DEFAULT_RETIRED_KEY_RETENTION = timedelta(days=8)
# How often a process looks for rotations made by another process sharing the directory.
DEFAULT_REFRESH_SECONDS = 5.0
# How long receivers and caches may keep the JWKS and the PEMs. A new key signs at once,
# so receivers learn of it by refetching on its unknown id, not by expiry: the age only
# bounds how long a key dropped from the set (retired past its retention, 8 days by
# default) is still trusted from a cache, and how often a receiver polls. Five minutes is
# far inside any retention and costs a receiver one small GET per five minutes.
PUBLIC_KEYS_MAX_AGE_SECONDS = 300
PUBLIC_KEYS_CACHE_CONTROL = f"public, max-age={PUBLIC_KEYS_MAX_AGE_SECONDS}"

_INDEX = "keys.json"
_LOCK = ".lock"
_INDEX_FORMAT = 1
_ACTIVE = "active"
_RETIRED = "retired"


class KeyRingError(Exception):
    """The keys directory is damaged: an unreadable index, a missing or foreign key file."""


@dataclass(frozen=True, kw_only=True)
class PublicKey:
    """A published key: active keys sign, retired ones only verify what they signed."""

    key_id: str
    algorithm: SignatureAlgorithm
    public_key_pem: str
    create_time: datetime
    retire_time: datetime | None = None

    @property
    def active(self) -> bool:
        return self.retire_time is None


@dataclass(frozen=True)
class _Signer:
    key_id: str
    private_key: PrivateKey


@dataclass(frozen=True)
class _State:
    """What one read of the directory found; replaced whole, so threads never see a mix."""

    keys: tuple[PublicKey, ...]
    signers: Mapping[SignatureAlgorithm, _Signer]
    index_stamp: tuple[int, int, int]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class KeyRing:
    """The signing keys in a directory. Use `KeyRing.open`."""

    def __init__(
        self,
        *,
        directory: Path,
        state: _State,
        clock: Callable[[], datetime],
        retired_key_retention: timedelta,
        refresh_seconds: float,
    ) -> None:
        self._directory = directory
        self._state = state
        self._clock = clock
        self._retention = retired_key_retention
        self._refresh_seconds = refresh_seconds
        self._next_refresh = time.monotonic() + refresh_seconds

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        clock: Callable[[], datetime] = _utc_now,
        retired_key_retention: timedelta = DEFAULT_RETIRED_KEY_RETENTION,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
    ) -> KeyRing:
        """Loads the keys, first creating an active key of each algorithm that has none.

        Processes opening the same directory at once take turns, so they agree on the keys.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory):
            now = clock()
            found = _read_index(directory)
            kept = _prune(found or (), now=now, retention=retired_key_retention)
            keys = _with_active_keys(directory, kept, now=now)
            if keys != found:
                _write_index(directory, keys)
            state = _load_state(directory, previous=None)
        return cls(
            directory=directory,
            state=state,
            clock=clock,
            retired_key_retention=retired_key_retention,
            refresh_seconds=refresh_seconds,
        )

    def sign(
        self, payload_as_string: str, algorithm: SignatureAlgorithm = DEFAULT_ALGORITHM
    ) -> Signature:
        """Signs the UTF-8 bytes of `payload_as_string` with the active key of `algorithm`.

        Safe to call from several threads (RSA is worth offloading: it releases the GIL).
        """
        self._refresh_if_due()
        signer = self._state.signers[algorithm]
        return signature_of(
            payload_as_string,
            algorithm=algorithm,
            key_id=signer.key_id,
            private_key=signer.private_key,
        )

    def rotate(self, algorithm: SignatureAlgorithm) -> PublicKey:
        """Creates a new active key for `algorithm` and retires the one it replaces."""
        with _locked(self._directory):
            now = self._clock()
            found = _read_index(self._directory) or ()
            replaced = [key for key in found if key.active and key.algorithm is algorithm]
            new = _new_key(self._directory, algorithm=algorithm, now=now)
            retired = _retire(found, algorithm=algorithm, now=now)
            kept = _prune(retired, now=now, retention=self._retention)
            _write_index(self._directory, (*kept, new))
            # Only once the index no longer names them as signers.
            _remove_private_keys(self._directory, replaced)
            self._state = _load_state(self._directory, previous=self._state)
        log.info("rotated the %s signing key; new key id %s", algorithm, new.key_id)
        return new

    def active_key_id(self, algorithm: SignatureAlgorithm = DEFAULT_ALGORITHM) -> str:
        self._refresh_if_due()
        return self._state.signers[algorithm].key_id

    def public_keys(self) -> list[PublicKey]:
        """Every key a receiver may need: the active ones and the recently retired, newest first."""
        self._refresh_if_due()
        now = self._clock()
        shown = [key for key in self._state.keys if _is_published(key, now, self._retention)]
        return sorted(shown, key=lambda key: (key.create_time, key.key_id), reverse=True)

    def public_key(self, key_id: str) -> PublicKey | None:
        return next((key for key in self.public_keys() if key.key_id == key_id), None)

    def refresh(self) -> bool:
        """Re-reads the directory if another process changed it; True when something changed.

        A failed re-read keeps the keys in use: signing goes on and the next refresh retries.
        """
        try:
            stamp = _stamp(os.stat(self._directory / _INDEX))
            if stamp == self._state.index_stamp:
                return False
            self._state = _load_state(self._directory, previous=self._state)
        except (OSError, KeyRingError) as error:
            log.warning("cannot re-read the signing keys in %s: %s", self._directory, error)
            return False
        return True

    def _refresh_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self._refresh_seconds
        self.refresh()


def to_jwks(public_keys: Iterable[PublicKey]) -> dict[str, list[dict[str, str]]]:
    """The keys as an RFC 7517 JSON Web Key Set, as served at `/.well-known/jwks.json`."""
    return {"keys": [_jwk(key) for key in public_keys]}


def _jwk(key: PublicKey) -> dict[str, str]:
    members = public_jwk(load_public_key(key.public_key_pem))
    return {**members, "kid": key.key_id, "alg": key.algorithm.jws_name, "use": "sig"}


# --- the directory -------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    descriptor = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(descriptor)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable, so a crash cannot bring back the old file.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _stamp(status: os.stat_result) -> tuple[int, int, int]:
    # Every write is a rename to a new inode, so the inode alone tells a change; the rest
    # covers file systems that reuse inode numbers.
    return (status.st_ino, status.st_mtime_ns, status.st_size)


def _read_index(directory: Path) -> tuple[PublicKey, ...] | None:
    """The index, or None when there is none yet."""
    keys, _ = _read_index_stamped(directory)
    return keys


def _read_index_stamped(
    directory: Path,
) -> tuple[tuple[PublicKey, ...] | None, tuple[int, int, int]]:
    path = directory / _INDEX
    try:
        with path.open("rb") as file:
            stamp = _stamp(os.fstat(file.fileno()))
            data = file.read()
    except FileNotFoundError:
        return None, (0, 0, 0)
    try:
        raw = json.loads(data)
        return tuple(_key_from_json(entry) for entry in raw["keys"]), stamp
    except (ValueError, KeyError, TypeError) as error:
        raise KeyRingError(f"the signing key index {path} is malformed: {error}") from error


def _write_index(directory: Path, keys: Iterable[PublicKey]) -> None:
    document = {"format": _INDEX_FORMAT, "keys": [_key_to_json(key) for key in keys]}
    _write_atomically(directory / _INDEX, json.dumps(document, indent=2).encode() + b"\n")


def _key_to_json(key: PublicKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "algorithm": str(key.algorithm),
        "status": _ACTIVE if key.active else _RETIRED,
        "create_time": key.create_time.isoformat(),
        "retire_time": key.retire_time.isoformat() if key.retire_time else None,
        "public_key_pem": key.public_key_pem,
    }


def _key_from_json(entry: Mapping[str, Any]) -> PublicKey:
    retire_time = _aware(entry["retire_time"]) if entry["retire_time"] else None
    if (entry["status"] == _ACTIVE) != (retire_time is None):
        raise ValueError(f"key {entry['key_id']}: status and retire_time disagree")
    return PublicKey(
        key_id=str(entry["key_id"]),
        algorithm=SignatureAlgorithm(entry["algorithm"]),
        public_key_pem=str(entry["public_key_pem"]),
        create_time=_aware(entry["create_time"]),
        retire_time=retire_time,
    )


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without a time zone: {text}")
    return moment


def _private_key_path(directory: Path, key_id: str) -> Path:
    return directory / f"{key_id}.pem"


def _new_key(directory: Path, *, algorithm: SignatureAlgorithm, now: datetime) -> PublicKey:
    private_key = _GENERATORS[algorithm]()
    new_id = key_id(private_key)
    _write_atomically(_private_key_path(directory, new_id), private_key_pem(private_key))
    return PublicKey(
        key_id=new_id,
        algorithm=algorithm,
        public_key_pem=public_key_pem(private_key).decode("ascii"),
        create_time=now,
    )


def _remove_private_keys(directory: Path, keys: Iterable[PublicKey]) -> None:
    for key in keys:
        _private_key_path(directory, key.key_id).unlink(missing_ok=True)


def _load_state(directory: Path, *, previous: _State | None) -> _State:
    keys, stamp = _read_index_stamped(directory)
    if keys is None:
        raise KeyRingError(f"the signing key index {directory / _INDEX} is missing")
    loaded = {signer.key_id: signer for signer in previous.signers.values()} if previous else {}
    signers: dict[SignatureAlgorithm, _Signer] = {}
    for key in keys:
        if key.active:
            # Loading an RSA key checks it, which takes milliseconds: reuse what is loaded.
            signers[key.algorithm] = loaded.get(key.key_id) or _load_signer(directory, key)
    missing = set(SignatureAlgorithm) - set(signers)
    if missing:
        raise KeyRingError(f"no active key for {', '.join(sorted(missing))} in {directory}")
    return _State(keys=keys, signers=signers, index_stamp=stamp)


def _load_signer(directory: Path, key: PublicKey) -> _Signer:
    path = _private_key_path(directory, key.key_id)
    try:
        private_key = load_private_key(path.read_bytes())
    except (OSError, ValueError) as error:
        raise KeyRingError(f"cannot load the private key {path}: {error}") from error
    if key_id(private_key) != key.key_id:
        raise KeyRingError(f"{path} does not hold the key its name and the index say")
    _warn_if_exposed(path)
    return _Signer(key.key_id, private_key)


def _warn_if_exposed(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("private key %s is readable by others (mode %03o); make it 0600", path, mode)


# --- policy --------------------------------------------------------------------------


def _with_active_keys(
    directory: Path, keys: tuple[PublicKey, ...], *, now: datetime
) -> tuple[PublicKey, ...]:
    have = {key.algorithm for key in keys if key.active}
    created = [
        _new_key(directory, algorithm=algorithm, now=now)
        for algorithm in SignatureAlgorithm
        if algorithm not in have
    ]
    return (*keys, *created)


def _retire(
    keys: Iterable[PublicKey], *, algorithm: SignatureAlgorithm, now: datetime
) -> tuple[PublicKey, ...]:
    return tuple(
        dataclasses.replace(key, retire_time=now)
        if key.active and key.algorithm is algorithm
        else key
        for key in keys
    )


def _prune(
    keys: Iterable[PublicKey], *, now: datetime, retention: timedelta
) -> tuple[PublicKey, ...]:
    return tuple(key for key in keys if _is_published(key, now, retention))


def _is_published(key: PublicKey, now: datetime, retention: timedelta) -> bool:
    return key.retire_time is None or now < key.retire_time + retention
