"""Password and token hashing for accounts.

Passwords: argon2id through argon2-cffi (RFC 9106) with the OWASP password storage cheat
sheet's parameters (19 MiB, 2 passes, 1 lane: ~30 ms on one core, where the library's default
RFC 9106 "low memory" profile takes ~1 s on a 2-core machine, which makes login itself a
denial-of-service lever); hashes made with other parameters are upgraded at the next login.
Session tokens and API keys are 32 random bytes (``secrets``), so a single sha256 is enough to
store them: nothing is gained by a slow hash on a value that cannot be guessed, and lookups
by hash compare in the database index, never character by character in Python.
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the username does not exist, so an unknown user and a wrong password
# take the same time (RELIABILITY.md item 75).
_DUMMY_HASH = _hasher.hash("limner-no-such-user")

KEY_PREFIX = "lmn_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored`` (an argon2 hash); False for None or mismatch."""
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def new_token() -> str:
    """A fresh session token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
