"""Redis client factory: one place decides URL, password, timeouts and pooling."""

from __future__ import annotations

import redis.asyncio as aioredis


def make_redis(url: str, password: str = "", *, timeout_s: float = 5.0, max_connections: int = 64) -> aioredis.Redis:
    """An asyncio Redis client that returns bytes; every call has a timeout."""
    kwargs = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "max_connections": max_connections,
        "health_check_interval": 30,
        "decode_responses": False,
    }
    if password:
        kwargs["password"] = password
    return aioredis.from_url(url, **kwargs)
