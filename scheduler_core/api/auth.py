"""Users of the HTTP API, their passwords, and the two ways to prove who you are: HTTP Basic and bearer tokens.

Passwords are stored only as argon2id hashes (argon2-cffi's PasswordHasher, its RFC 9106 defaults). Bearer tokens are
`v1.<payload>.<HMAC-SHA256>`: stateless, signed with a secret that lives only in this process's memory (a restart
revokes every token; clients fetch a new one with their password), and bound to the user's current password hash, so
`carnation users passwd` or `users remove` revokes that user's tokens at once. Every comparison of secrets is
constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import FieldError, SpecError
from ..store import Store

# Lower-case ASCII only: the same name means the same user on SQLite, PostgreSQL and MariaDB (whose default collation
# is case- and accent-insensitive), and no ':' (HTTP Basic splits user:password at the first colon).
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,149}")
PASSWORD_MIN_LENGTH = 8
# argon2 takes any length; the bound only stops a request from asking for megabytes of hashing.
PASSWORD_MAX_LENGTH = 1024
TOKEN_TTL_SECONDS = 3600

_hasher = PasswordHasher()


@dataclass(frozen=True, slots=True)
class User:
    username: str
    created_at: datetime


def normalize_username(name: str) -> str:
    """The stored form of a user name (lower case). Raises SpecError naming `username`."""
    folded = name.lower()
    if not USERNAME_RE.fullmatch(folded):
        raise SpecError(FieldError(
            "username", "use 1 to 150 characters: letters, digits and . _ @ - (starting with a letter or digit)"))
    return folded


def check_password_policy(password: str) -> None:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise SpecError(FieldError("password", f"must be at least {PASSWORD_MIN_LENGTH} characters"))
    if len(password) > PASSWORD_MAX_LENGTH:
        raise SpecError(FieldError("password", f"must be at most {PASSWORD_MAX_LENGTH} characters"))


def hash_password(password: str) -> str:
    check_password_policy(password)
    return _hasher.hash(password)


class UserAdmin:
    """`carnation users add|remove|passwd|list` on top of the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, username: str, password: str) -> str:
        name = normalize_username(username)
        if not self.store.add_user(name, hash_password(password)):
            raise SpecError(FieldError("username", f"user {name} already exists"))
        return name

    def set_password(self, username: str, password: str) -> str:
        name = normalize_username(username)
        if not self.store.set_user_password(name, hash_password(password)):
            raise SpecError(FieldError("username", f"no user named {name}"))
        return name

    def remove(self, username: str) -> str:
        name = normalize_username(username)
        if not self.store.remove_user(name):
            raise SpecError(FieldError("username", f"no user named {name}"))
        return name

    def list(self) -> list[User]:
        return [User(name, datetime.fromtimestamp(created, timezone.utc)) for name, created in self.store.list_users()]

    def count(self) -> int:
        return self.store.count_users()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _fingerprint(password_hash: str) -> str:
    return _b64(hashlib.sha256(password_hash.encode()).digest()[:12])


class Authenticator:
    """Checks passwords and tokens for the API. Thread-safe; one per server."""

    def __init__(
        self,
        store: Store,
        *,
        token_ttl: int = TOKEN_TTL_SECONDS,
        secret: bytes | None = None,
        max_parallel_hashes: int = 4,
        cache_seconds: float = 300.0,
    ) -> None:
        self.store = store
        self.token_ttl = token_ttl
        self._secret = secret or secrets.token_bytes(32)
        # argon2 takes 64 MiB per verification: bound the memory a burst of (bad) logins can demand.
        self._hash_slots = threading.BoundedSemaphore(max_parallel_hashes)
        # Scripts send Basic credentials with every request; re-running argon2 each time would cost ~50 ms a call.
        # Keys are HMACs of name+password under the process secret (never the password); a hit only counts while the
        # stored hash is unchanged, so a password change or removal takes effect immediately.
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_seconds = cache_seconds
        self._dummy_hash: str | None = None

    # --- passwords ---------------------------------------------------------------------------------------------
    def verify_password(self, username: str, password: str) -> str | None:
        """The user's name if `password` is theirs, else None."""
        try:
            name = normalize_username(username)
        except SpecError:
            name = None
        row = self.store.get_user(name) if name and len(password) <= PASSWORD_MAX_LENGTH else None
        if row is None:
            self._burn_time(password)  # an unknown name costs as much as a wrong password: no user enumeration
            return None
        name, stored_hash = row
        key = hmac.new(self._secret, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached and cached[1] > time.monotonic() and hmac.compare_digest(cached[0], stored_hash):
            return name
        with self._hash_slots:
            try:
                _hasher.verify(stored_hash, password)
            except (VerificationError, InvalidHashError):
                return None
            if _hasher.check_needs_rehash(stored_hash):
                # Hash parameters were raised since this one was made: upgrade it while we hold the password.
                stored_hash = _hasher.hash(password)
                self.store.set_user_password(name, stored_hash)
        with self._cache_lock:
            self._cache[key] = (stored_hash, time.monotonic() + self._cache_seconds)
            while len(self._cache) > 1024:
                self._cache.popitem(last=False)
        return name

    def _burn_time(self, password: str) -> None:
        if self._dummy_hash is None:
            self._dummy_hash = _hasher.hash(secrets.token_hex(16))
        with self._hash_slots:
            try:
                _hasher.verify(self._dummy_hash, password[:PASSWORD_MAX_LENGTH])
            except (VerificationError, InvalidHashError):
                pass

    # --- bearer tokens -------------------------------------------------------------------------------------------
    def issue_token(self, username: str) -> str:
        row = self.store.get_user(username)
        if row is None:
            raise SpecError(FieldError("username", f"no user named {username}"))
        payload = _b64(json.dumps(
            {"sub": row[0], "exp": int(time.time()) + self.token_ttl, "fp": _fingerprint(row[1])},
            separators=(",", ":"),
        ).encode())
        return f"v1.{payload}.{self._sign('v1.' + payload)}"

    def verify_token(self, token: str) -> str | None:
        """The user's name if `token` is valid, unexpired and their password has not changed since, else None."""
        if len(token) > 2000 or not token.isascii():
            return None
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "v1":
            return None
        if not hmac.compare_digest(self._sign(f"v1.{parts[1]}"), parts[2]):
            return None
        try:
            claims = json.loads(_unb64(parts[1]))
            name, expires, fingerprint = claims["sub"], claims["exp"], claims["fp"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(expires, int) or expires <= time.time() or not isinstance(name, str):
            return None
        row = self.store.get_user(name)
        if row is None or not hmac.compare_digest(_fingerprint(row[1]), str(fingerprint)):
            return None
        return name

    def _sign(self, message: str) -> str:
        return _b64(hmac.new(self._secret, message.encode("ascii"), hashlib.sha256).digest())
