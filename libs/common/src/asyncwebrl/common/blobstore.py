"""Content-addressed screenshot store in Redis.

A blob's key is the sha256 of its encoded bytes, so the same screenshot taken in
many steps is stored once. Each blob is one Redis hash (bytes plus metadata)
with a TTL that every put refreshes. Reference counting and the memory budget
belong to the buffer service, which builds on the same keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import redis.asyncio as aioredis

from asyncwebrl.common.keys import blob_key, is_sha256

MIME_TYPES = ("image/jpeg", "image/png")


@dataclasses.dataclass(frozen=True, slots=True)
class BlobRef:
    """What travels instead of image bytes."""

    sha256: str
    size_bytes: int
    mime: str
    width: int
    height: int


class BlobStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: int = 3600, max_blob_bytes: int = 8 * 1024 * 1024):
        if ttl_s <= 0:
            raise ValueError("ttl_s: must be positive")
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_blob_bytes = max_blob_bytes

    async def put(self, data: bytes, mime: str, width: int, height: int) -> BlobRef:
        if mime not in MIME_TYPES:
            raise ValueError(f"mime: must be one of {MIME_TYPES}, got {mime!r}")
        if not 0 < len(data) <= self.max_blob_bytes:
            raise ValueError(f"data: size {len(data)} outside (0, {self.max_blob_bytes}]")
        if width <= 0 or height <= 0:
            raise ValueError("width/height: must be positive")
        ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data), mime, width, height)
        key = blob_key(self.prefix, ref.sha256)
        # Identical content under an identical key, so a concurrent writer is harmless.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={"data": data, "mime": mime, "width": width, "height": height, "size": len(data)},
            )
            pipe.expire(key, self.ttl_s)
            await pipe.execute()
        return ref

    async def get(self, sha256: str) -> bytes | None:
        if not is_sha256(sha256):
            raise ValueError(f"sha256: not a hex sha256 digest: {sha256[:80]!r}")
        return await self.redis.hget(blob_key(self.prefix, sha256), "data")

    async def get_many(self, digests: Sequence[str]) -> list[bytes | None]:
        for d in digests:
            if not is_sha256(d):
                raise ValueError(f"sha256: not a hex sha256 digest: {d[:80]!r}")
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in digests:
                pipe.hget(blob_key(self.prefix, d), "data")
            return await pipe.execute()

    async def stat(self, sha256: str) -> BlobRef | None:
        if not is_sha256(sha256):
            raise ValueError(f"sha256: not a hex sha256 digest: {sha256[:80]!r}")
        fields = await self.redis.hmget(blob_key(self.prefix, sha256), ["mime", "width", "height", "size"])
        if fields[0] is None:
            return None
        mime, width, height, size = fields
        return BlobRef(sha256, int(size), mime.decode(), int(width), int(height))

    async def ttl(self, sha256: str) -> int:
        return await self.redis.ttl(blob_key(self.prefix, sha256))
