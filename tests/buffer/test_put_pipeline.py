"""Concurrent PutGroups share one Redis pipeline (store._put_one): each group is
still stored once, answered on its own, and counted once."""

from __future__ import annotations

import asyncio
import uuid

from asyncwebrl.buffer.config import BufferConfig
from asyncwebrl.buffer.store import GroupStore
from asyncwebrl.buffer.validate import check_group
from asyncwebrl.common.blobstore import BlobStore
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.v1 import env_pb2
from tests.buffer.conftest import make_group


async def test_concurrent_puts_share_pipelines_and_stay_idempotent(redis_server):
    config = BufferConfig(key_prefix=f"p{uuid.uuid4().hex[:6]}:")
    redis = make_redis(redis_server.url, redis_server.password)
    blobs = BlobStore(redis, config.key_prefix)
    store = GroupStore(redis, blobs, config)
    job = "pipelined"
    try:
        ref = await blobs.put(job, b"screen", "image/png", 4, 4)
        sref = env_pb2.ScreenshotRef(sha256=ref.sha256, width=4, height=4, mime="image/png", size_bytes=ref.size_bytes)
        groups = [make_group(job, [sref]) for _ in range(12)]
        settings = await store.settings(job)

        async def put(g):
            data = g.SerializeToString()
            return await store.put(job, g.group_id, memoryview(data), check_group(g, config.limits, 0), settings)

        # Each group twice, all at once: one of each pair stores, the other is a duplicate of the same entry.
        replies = await asyncio.gather(*(put(g) for g in groups + groups))
        first, second = replies[:12], replies[12:]
        for (dup_a, id_a), (dup_b, id_b) in zip(first, second):
            assert sorted([dup_a, dup_b]) == [False, True] and id_a == id_b
        s = await store.stats(job)
        assert (s.groups_accepted, s.groups_duplicate, s.stream_length) == (12, 12, 12)
        assert s.group_bytes == sum(g.ByteSize() for g in groups)
        assert await blobs.refs(job, ref.sha256) == 12

        # Scripts flushed (Redis restarted without them): the next puts load the script again.
        await redis.script_flush()
        more = [make_group(job, [sref]) for _ in range(3)]
        replies = await asyncio.gather(*(put(g) for g in more))
        assert [dup for dup, _ in replies] == [False, False, False]
        batch = await store.get_batch(job, "t", 64, 0, -1, 0)
        assert len(batch.groups) == 15 and set(batch.groups) == {g.SerializeToString() for g in groups + more}
    finally:
        await redis.aclose()
