from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from asyncwebrl.common.blobstore import BlobBudgetExceeded, BlobStore
from asyncwebrl.common.redisclient import make_redis


@pytest.fixture
async def store(redis_server):
    redis = make_redis(redis_server.url, redis_server.password)
    # A prefix of its own per test: the byte budget and counters are deployment-wide.
    yield BlobStore(redis, f"test-blobs-{uuid.uuid4().hex[:8]}:", ttl_s=60, max_blob_bytes=1024)
    await redis.aclose()


async def test_content_addressed_and_stored_once(store, redis_server):
    data = b"\xff\xd8 fake jpeg bytes"
    ref = await store.put("j1", data, "image/jpeg", 160, 210)
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size_bytes == len(data)
    again = await store.put("j1", data, "image/jpeg", 160, 210)
    assert again == ref
    keys = redis_server.client().keys(f"{store.prefix}job:j1:blob:*")
    assert keys == [f"{store.prefix}job:j1:blob:{ref.sha256}".encode()]
    assert await store.get("j1", ref.sha256) == data
    assert await store.get("other-job", ref.sha256) is None, "blobs are per job"
    assert await store.stat("j1", ref.sha256) == ref
    assert await store.refs("j1", ref.sha256) == 0
    assert await store.deadline_ms("j1", ref.sha256) is not None
    other = await store.put("j1", b"other", "image/png", 1, 1)
    assert await store.get_many("j1", [ref.sha256, other.sha256, "0" * 64]) == [data, b"other", None]
    assert await store.stat("j1", "0" * 64) is None
    assert await store.usage("j1") == (2, len(data) + len(b"other"))
    assert await store.total_bytes() == len(data) + len(b"other")
    assert await store.jobs() == ["j1"]


async def test_budget_refuses_new_blobs_but_not_known_ones(store):
    await store.set_budget(1000)
    kept = await store.put("j1", b"a" * 600, "image/png", 1, 1)
    with pytest.raises(BlobBudgetExceeded, match="1000 bytes"):
        await store.put("j1", b"b" * 600, "image/png", 1, 1)
    # The same content is already paid for.
    assert await store.put("j1", b"a" * 600, "image/png", 1, 1) == kept
    assert await store.total_bytes() == 600
    await store.set_budget(0)
    await store.put("j1", b"b" * 600, "image/png", 1, 1)
    assert await store.total_bytes() == 1200


async def test_unreferenced_blobs_are_reclaimed_after_their_deadline(redis_server):
    redis = make_redis(redis_server.url, redis_server.password)
    store = BlobStore(redis, f"test-blobs-{uuid.uuid4().hex[:8]}:", ttl_s=1, max_blob_bytes=1024)
    try:
        ref = await store.put("j1", b"old", "image/png", 1, 1)
        assert await store.sweep("j1") == 0, "not due yet"
        await asyncio.sleep(1.2)
        # Any put reclaims what is due before it checks the budget.
        await store.put("j1", b"new", "image/png", 1, 1)
        assert await store.get("j1", ref.sha256) is None
        assert await store.usage("j1") == (1, 3)
        assert await store.total_bytes() == 3
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("data", "mime", "w", "h", "field"),
    [
        (b"x", "image/gif", 1, 1, "mime"),
        (b"", "image/png", 1, 1, "data"),
        (b"x" * 2048, "image/png", 1, 1, "data"),
        (b"x", "image/png", 0, 1, "width"),
        (b"x", "image/png", 1, 10**6, "height"),
    ],
)
async def test_bad_puts_are_refused(store, data, mime, w, h, field):
    with pytest.raises(ValueError, match=field):
        await store.put("j1", data, mime, w, h)
    assert await store.total_bytes() == 0


async def test_bad_digests_and_jobs_are_refused(store):
    for bad in ("", "xyz", "A" * 64, "../" * 30):
        with pytest.raises(ValueError, match="sha256"):
            await store.get("j1", bad)
    for bad_job in ("", "a:b", "x" * 65, "../x"):
        with pytest.raises(ValueError, match="job_id"):
            await store.put(bad_job, b"x", "image/png", 1, 1)
