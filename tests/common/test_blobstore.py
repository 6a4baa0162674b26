from __future__ import annotations

import hashlib

import pytest

from asyncwebrl.common.blobstore import BlobStore
from asyncwebrl.common.redisclient import make_redis


@pytest.fixture
async def store(redis_server):
    redis = make_redis(redis_server.url, redis_server.password)
    yield BlobStore(redis, "test-blobs:", ttl_s=60, max_blob_bytes=1024)
    await redis.aclose()


async def test_content_addressed_and_stored_once(store, redis_server):
    data = b"\xff\xd8 fake jpeg bytes"
    ref = await store.put(data, "image/jpeg", 160, 210)
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size_bytes == len(data)
    again = await store.put(data, "image/jpeg", 160, 210)
    assert again == ref
    keys = redis_server.client().keys("test-blobs:blob:*")
    assert keys == [f"test-blobs:blob:{ref.sha256}".encode()]
    assert await store.get(ref.sha256) == data
    assert await store.stat(ref.sha256) == ref
    assert 0 < await store.ttl(ref.sha256) <= 60
    other = await store.put(b"other", "image/png", 1, 1)
    assert await store.get_many([ref.sha256, other.sha256, "0" * 64]) == [data, b"other", None]
    assert await store.stat("0" * 64) is None


@pytest.mark.parametrize(
    ("data", "mime", "w", "h", "field"),
    [
        (b"x", "image/gif", 1, 1, "mime"),
        (b"", "image/png", 1, 1, "data"),
        (b"x" * 2048, "image/png", 1, 1, "data"),
        (b"x", "image/png", 0, 1, "width"),
    ],
)
async def test_bad_puts_are_refused(store, data, mime, w, h, field):
    with pytest.raises(ValueError, match=field):
        await store.put(data, mime, w, h)


async def test_bad_digests_are_refused(store):
    for bad in ("", "xyz", "A" * 64, "../" * 30):
        with pytest.raises(ValueError, match="sha256"):
            await store.get(bad)
