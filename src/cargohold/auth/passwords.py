"""Password hashing with argon2id, run off the event loop (each check costs ~20 ms CPU)."""

from __future__ import annotations

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# Checked when the account does not exist, so both cases cost the same time.
_DUMMY = _hasher.hash("cargohold-no-such-user")

MIN_LENGTH = 8
MAX_LENGTH = 1024


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


# Each argon2 run takes 19 MiB; run at most two at once (one per core here), so a burst
# of logins neither starves the event loop's core nor leaves a 19 MiB heap arena behind
# in each of the thread pool's threads.
_limiter: anyio.CapacityLimiter | None = None


def _argon2_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # made on first use: it belongs to the running event loop
        _limiter = anyio.CapacityLimiter(2)
    return _limiter


async def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not `stored` exists (None: no such user)."""
    if len(password) > MAX_LENGTH:
        password = password[:MAX_LENGTH]
    return await anyio.to_thread.run_sync(_verify, stored, password, limiter=_argon2_limiter())


async def hash_password_async(password: str) -> str:
    return await anyio.to_thread.run_sync(hash_password, password, limiter=_argon2_limiter())


def password_problem(password: str) -> str | None:
    """Why `password` cannot be used, or None."""
    if len(password) < MIN_LENGTH:
        return f"password must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"password must be at most {MAX_LENGTH} characters"
    return None
