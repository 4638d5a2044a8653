"""State shared by every replica through Redis, when `redis.url` is set: cache
invalidation across hosts (`state`), login throttle counters (`throttle`) and locks
(`locks`). Nothing outside `services.runtime` and the health checks imports this package,
and only when Redis is configured: the client library costs a worker ~20 MiB."""
