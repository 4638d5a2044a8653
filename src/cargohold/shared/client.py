"""Redis clients built from the settings, and the health check."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cargohold.settings import RedisSettings

# What a Redis command raises when Redis is unreachable or broken.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    aioredis.RedisError,
    OSError,
    TimeoutError,
)


def connect(settings: RedisSettings, *, retries: int = 1) -> aioredis.Redis:
    """A client (a connection pool) with the configured timeouts. `retries`: reconnect
    attempts after a broken connection before a command fails (a pooled connection that
    Redis closed is retried once; an outage fails fast instead of retrying for seconds)."""
    return aioredis.Redis.from_url(
        settings.url,
        socket_connect_timeout=settings.connect_timeout_seconds,
        socket_timeout=settings.timeout_seconds,
        retry=Retry(NoBackoff(), retries),
        client_name="cargohold",
    )


async def check(settings: RedisSettings) -> None:
    """PING on a new connection: proves Redis answers now (not a pooled socket)."""
    client = connect(settings, retries=0)
    try:
        if not await client.ping():
            raise RuntimeError("PING did not answer PONG")
    finally:
        await client.aclose()
