"""Content-addressed, reference-counted screenshot store in Redis.

A blob's key is the sha256 of its encoded bytes, under its job's prefix, so the
same screenshot taken in many steps is stored once. Its life:

1. ``put`` (envfleet, or the buffer's PutBlobs) stores it *unreferenced*, with a
   deadline ``ttl_s`` ahead in ``J blobs:unref``; a repeated put extends it.
2. A stored group that uses it (the buffer's PutGroup) adds a reference and
   removes the deadline: an accepted group never loses its screenshots.
3. When the last such group is acked or rejected the blob becomes unreferenced
   again, with a short grace deadline (an episode still running may hold the same
   screenshot), or is deleted at once when the grace is 0.
4. Any put, and the buffer's sweeper, delete unreferenced blobs past their
   deadline. Only these scripts delete blobs, so the byte counters stay exact.

The byte budget (``P blobs:budget``, set by the buffer) covers all jobs: a put of
a new blob past it is refused with ``BlobBudgetExceeded`` rather than letting
Redis evict trajectory data. All bookkeeping runs in Lua, atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import redis.asyncio as aioredis

from asyncwebrl.common.keys import (
    blob_budget_key,
    blob_bytes_key,
    blob_key,
    is_sha256,
    job_prefix,
    jobs_key,
)

MIME_TYPES = ("image/jpeg", "image/png")
MAX_DIMENSION = 16384

# Shared by the blob scripts here and the buffer's group scripts, which must
# reference and release blobs in the same atomic step as their stream writes.
LUA_LIB = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop_blob(jp, gbytes, sha)
  local key = jp .. 'blob:' .. sha
  local size = tonumber(redis.call('HGET', key, 'size') or '0')
  if redis.call('DEL', key) == 1 then
    redis.call('HINCRBY', jp .. 'blobs:stat', 'count', -1)
    redis.call('HINCRBY', jp .. 'blobs:stat', 'bytes', -size)
    redis.call('DECRBY', gbytes, size)
  end
  redis.call('ZREM', jp .. 'blobs:unref', sha)
end
local function reclaim(jp, gbytes, now, limit)
  local due = redis.call('ZRANGEBYSCORE', jp .. 'blobs:unref', '-inf', now, 'LIMIT', 0, limit)
  for _, sha in ipairs(due) do drop_blob(jp, gbytes, sha) end
  return #due
end
local function missing_blob(jp, shas)
  for _, sha in ipairs(shas) do
    if redis.call('EXISTS', jp .. 'blob:' .. sha) == 0 then return sha end
  end
  return nil
end
local function ref_blobs(jp, shas)
  for _, sha in ipairs(shas) do
    redis.call('HINCRBY', jp .. 'blob:' .. sha, 'refs', 1)
    redis.call('ZREM', jp .. 'blobs:unref', sha)
  end
end
local function release_blobs(jp, gbytes, shas, grace_ms, now)
  for _, sha in ipairs(shas) do
    local key = jp .. 'blob:' .. sha
    if redis.call('EXISTS', key) == 1 then
      local refs = redis.call('HINCRBY', key, 'refs', -1)
      if refs <= 0 then
        redis.call('HSET', key, 'refs', 0)
        if grace_ms <= 0 then
          drop_blob(jp, gbytes, sha)
        else
          redis.call('ZADD', jp .. 'blobs:unref', now + grace_ms, sha)
        end
      end
    end
  end
end
local function split(text)
  local out = {}
  for word in string.gmatch(text or '', '%S+') do out[#out + 1] = word end
  return out
end
"""

# ARGV: jp, gbytes, budget, jobs, job, sha, data, mime, width, height, ttl_ms
# -> 1 stored, 0 already there (deadline extended if unreferenced), -1 over budget
_PUT = LUA_LIB + r"""
local jp, gbytes, budget_key, jobs, job, sha = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local data, ttl = ARGV[7], tonumber(ARGV[11])
local key = jp .. 'blob:' .. sha
local now = now_ms()
if redis.call('EXISTS', key) == 1 then
  if tonumber(redis.call('HGET', key, 'refs') or '0') <= 0 then
    redis.call('ZADD', jp .. 'blobs:unref', 'GT', now + ttl, sha)
  end
  return 0
end
reclaim(jp, gbytes, now, 64)
local budget = tonumber(redis.call('GET', budget_key) or '0')
local total = tonumber(redis.call('GET', gbytes) or '0')
if budget > 0 and total + #data > budget then return -1 end
redis.call('HSET', key, 'data', data, 'mime', ARGV[8], 'width', ARGV[9], 'height', ARGV[10], 'size', #data, 'refs', 0)
redis.call('ZADD', jp .. 'blobs:unref', now + ttl, sha)
redis.call('HINCRBY', jp .. 'blobs:stat', 'count', 1)
redis.call('HINCRBY', jp .. 'blobs:stat', 'bytes', #data)
redis.call('INCRBY', gbytes, #data)
redis.call('SADD', jobs, job)
return 1
"""

# ARGV: jp, gbytes, limit -> blobs deleted
_SWEEP = LUA_LIB + r"""
return reclaim(ARGV[1], ARGV[2], now_ms(), tonumber(ARGV[3]))
"""


class BlobBudgetExceeded(Exception):
    """The blob byte budget is spent: back off until trained groups free some."""


@dataclasses.dataclass(frozen=True, slots=True)
class BlobRef:
    """What travels instead of image bytes."""

    sha256: str
    size_bytes: int
    mime: str
    width: int
    height: int


def check_blob(data: bytes, mime: str, width: int, height: int, max_bytes: int) -> None:
    if mime not in MIME_TYPES:
        raise ValueError(f"mime: must be one of {MIME_TYPES}, got {mime[:40]!r}")
    if not 0 < len(data) <= max_bytes:
        raise ValueError(f"data: size {len(data)} outside (0, {max_bytes}]")
    if not 0 < width <= MAX_DIMENSION:
        raise ValueError(f"width: must be in (0, {MAX_DIMENSION}], got {width}")
    if not 0 < height <= MAX_DIMENSION:
        raise ValueError(f"height: must be in (0, {MAX_DIMENSION}], got {height}")


def _check_digests(digests: Sequence[str]) -> None:
    for d in digests:
        if not is_sha256(d):
            raise ValueError(f"sha256: not a hex sha256 digest: {d[:80]!r}")


class BlobStore:
    def __init__(
        self, redis: aioredis.Redis, prefix: str, ttl_s: int = 3600, max_blob_bytes: int = 8 * 1024 * 1024
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s: must be positive")
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_blob_bytes = max_blob_bytes
        self._put = redis.register_script(_PUT)
        self._sweep = redis.register_script(_SWEEP)

    def _jp(self, job_id: str) -> str:
        return job_prefix(self.prefix, job_id)

    async def put(self, job_id: str, data: bytes, mime: str, width: int, height: int) -> BlobRef:
        return (await self.put_many(job_id, [(data, mime, width, height)]))[0]

    async def put_many(self, job_id: str, blobs: Sequence[tuple[bytes, str, int, int]]) -> list[BlobRef]:
        """Store every blob, or raise ``BlobBudgetExceeded`` if any new one would pass the budget."""
        jp = self._jp(job_id)
        refs = []
        for data, mime, width, height in blobs:
            check_blob(data, mime, width, height, self.max_blob_bytes)
            refs.append(BlobRef(hashlib.sha256(data).hexdigest(), len(data), mime, width, height))
        common = [jp, blob_bytes_key(self.prefix), blob_budget_key(self.prefix), jobs_key(self.prefix), job_id]
        ttl_ms = self.ttl_s * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            for ref, (data, *_) in zip(refs, blobs):
                await self._put(args=[*common, ref.sha256, data, ref.mime, ref.width, ref.height, ttl_ms], client=pipe)
            results = await pipe.execute()
        if any(r == -1 for r in results):
            raise BlobBudgetExceeded(
                f"blob budget of {await self.budget()} bytes spent; retry after trained groups release theirs"
            )
        return refs

    async def get(self, job_id: str, sha256: str) -> bytes | None:
        return (await self.get_many(job_id, [sha256]))[0]

    async def get_many(self, job_id: str, digests: Sequence[str]) -> list[bytes | None]:
        _check_digests(digests)
        jp = self._jp(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in digests:
                pipe.hget(blob_key(jp, d), "data")
            return await pipe.execute()

    async def get_full_many(self, job_id: str, digests: Sequence[str]) -> list[tuple[bytes, BlobRef] | None]:
        _check_digests(digests)
        jp = self._jp(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in digests:
                pipe.hmget(blob_key(jp, d), ["data", "mime", "width", "height"])
            rows = await pipe.execute()
        out: list[tuple[bytes, BlobRef] | None] = []
        for d, (data, mime, width, height) in zip(digests, rows):
            if data is None:
                out.append(None)
            else:
                out.append((data, BlobRef(d, len(data), mime.decode(), int(width), int(height))))
        return out

    async def stat(self, job_id: str, sha256: str) -> BlobRef | None:
        _check_digests([sha256])
        fields = await self.redis.hmget(blob_key(self._jp(job_id), sha256), ["mime", "width", "height", "size"])
        if fields[0] is None:
            return None
        mime, width, height, size = fields
        return BlobRef(sha256, int(size), mime.decode(), int(width), int(height))

    async def refs(self, job_id: str, sha256: str) -> int | None:
        """Groups referencing the blob; None when it is not stored."""
        _check_digests([sha256])
        value = await self.redis.hget(blob_key(self._jp(job_id), sha256), "refs")
        return None if value is None else int(value)

    async def deadline_ms(self, job_id: str, sha256: str) -> float | None:
        """When an unreferenced blob will be reclaimed (Redis time, ms); None if referenced or absent."""
        _check_digests([sha256])
        return await self.redis.zscore(f"{self._jp(job_id)}blobs:unref", sha256)

    async def usage(self, job_id: str) -> tuple[int, int]:
        count, size = await self.redis.hmget(f"{self._jp(job_id)}blobs:stat", ["count", "bytes"])
        return int(count or 0), int(size or 0)

    async def total_bytes(self) -> int:
        return int(await self.redis.get(blob_bytes_key(self.prefix)) or 0)

    async def budget(self) -> int:
        return int(await self.redis.get(blob_budget_key(self.prefix)) or 0)

    async def set_budget(self, budget_bytes: int) -> None:
        """0 removes the budget."""
        if budget_bytes < 0:
            raise ValueError("budget_bytes: must be >= 0")
        if budget_bytes:
            await self.redis.set(blob_budget_key(self.prefix), budget_bytes)
        else:
            await self.redis.delete(blob_budget_key(self.prefix))

    async def sweep(self, job_id: str, limit: int = 1000) -> int:
        """Delete unreferenced blobs of the job whose deadline passed."""
        return int(await self._sweep(args=[self._jp(job_id), blob_bytes_key(self.prefix), limit]))

    async def jobs(self) -> list[str]:
        return sorted(j.decode() for j in await self.redis.smembers(jobs_key(self.prefix)))
