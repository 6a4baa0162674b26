"""Faults: redis-server and the buffer killed and restarted, the blob budget spent,
blobs kept through the release grace."""

from __future__ import annotations

import signal
import time
import uuid

import grpc
import pytest

from asyncwebrl.buffer.config import BufferConfig
from asyncwebrl.buffer.store import GroupStore
from asyncwebrl.buffer.validate import check_group
from asyncwebrl.common.blobstore import BlobStore
from asyncwebrl.common.localstack import RedisServer
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.v1 import buffer_pb2, env_pb2
from tests.buffer.conftest import error_of, get_batch, make_group, png, put_blobs, start_buffer, stats, stub_for


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def _retry(call, *args, attempts: int = 50):
    """What a client does while Redis comes back: UNAVAILABLE, then success."""
    for _ in range(attempts):
        try:
            return call(*args)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.1)
    raise AssertionError("still unavailable")


def test_acknowledged_groups_survive_redis_sigkill(own_redis, tmp_path):
    svc = start_buffer(tmp_path, own_redis)
    ch, stub = stub_for(svc)
    try:
        job = "durable"
        refs = put_blobs(stub, job, ["a", "b"])
        sent = [make_group(job, refs) for _ in range(20)]
        for g in sent:
            stub.PutGroup(buffer_pb2.PutGroupRequest(group=g))
        # No pause: each PutGroup reply went out only after Redis wrote the AOF.
        own_redis.kill()
        err = error_of(stub.PutGroup, buffer_pb2.PutGroupRequest(group=make_group(job, refs)))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, "Redis down is UNAVAILABLE, and the buffer stays up"
        own_redis.start()
        s = _retry(stub.Stats, buffer_pb2.BufferStatsRequest(job_id=job))
        assert (s.groups_accepted, s.stream_length, s.blob_count) == (20, 20, 2)
        header, groups = get_batch(stub, job, groups=50)
        assert [g.group_id for g in groups] == [g.group_id for g in sent]
        # Idempotency survives too: a gateway retrying an acknowledged group stores nothing new.
        assert stub.PutGroup(buffer_pb2.PutGroupRequest(group=sent[0])).duplicate
    finally:
        ch.close()
        assert svc.stop() == 0, svc.logs()


def test_buffer_sigkill_loses_no_state(redis_server, tmp_path):
    prefix = f"k{uuid.uuid4().hex[:6]}:"
    first = start_buffer(tmp_path, redis_server, "--key-prefix", prefix, name="first")
    ch, stub = stub_for(first)
    job = "restarts"
    refs = put_blobs(stub, job, ["r"])
    sent = [make_group(job, refs) for _ in range(4)]
    for g in sent:
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=g))
    stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=1))
    header, groups = get_batch(stub, job, groups=2, version=1)
    before = stats(stub, job)
    ch.close()
    first.stop(signal.SIGKILL)

    second = start_buffer(tmp_path, redis_server, "--key-prefix", prefix, name="second")
    ch, stub = stub_for(second)
    try:
        after = stats(stub, job)
        assert after.oldest_entry_age_s >= before.oldest_entry_age_s
        after.ClearField("oldest_entry_age_s")
        before.ClearField("oldest_entry_age_s")
        assert after == before
        # The batch handed out before the crash is still the trainer's to ack.
        ack = stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-0",
                                             trainer_version=2))
        assert ack.groups == 2
        _, rest = get_batch(stub, job, groups=10, version=2)
        assert [g.group_id for g in groups + rest] == [g.group_id for g in sent]
    finally:
        ch.close()
        assert second.stop() == 0, second.logs()


def test_blob_budget_refuses_blobs_but_not_trajectories(redis_server, tmp_path):
    svc = start_buffer(tmp_path, redis_server, "--key-prefix", f"b{uuid.uuid4().hex[:6]}:",
                       "--blob-budget-bytes", "350000", "--blob-release-grace-s", "0")
    ch, stub = stub_for(svc)
    try:
        job = "budget"
        refs = put_blobs(stub, job, ["s1", "s2", "s3"], size=100_000)
        err = error_of(stub.PutBlobs, buffer_pb2.PutBlobsRequest(job_id=job, blobs=[png("s4", 100_000)]))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "budget" in err.details()
        # A screenshot already stored costs nothing more.
        assert put_blobs(stub, job, ["s1"], size=100_000) == refs[:1]
        # Trajectory writes keep working past the blob budget.
        for i in range(3):
            stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, refs[i:i + 1])))
        s = stats(stub, job)
        assert (s.groups_accepted, s.blob_bytes_all_jobs, s.blob_budget_bytes) == (3, 300_000, 350_000)
        # Training frees the memory, and blobs are accepted again.
        header, _ = get_batch(stub, job, groups=2)
        stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-0"))
        assert stats(stub, job).blob_bytes_all_jobs == 100_000
        assert len(put_blobs(stub, job, ["s4"], size=100_000)) == 1
    finally:
        ch.close()
        svc.stop()


async def test_released_blobs_live_through_the_grace_and_can_be_referenced_again(redis_server):
    config = BufferConfig(key_prefix=f"g{uuid.uuid4().hex[:6]}:", blob_release_grace_s=60)
    redis = make_redis(redis_server.url, redis_server.password)
    blobs = BlobStore(redis, config.key_prefix)
    store = GroupStore(redis, blobs, config)
    job = "grace"
    try:
        ref = await blobs.put(job, b"same screen", "image/png", 4, 4)
        sref = env_pb2.ScreenshotRef(sha256=ref.sha256, width=4, height=4, mime="image/png", size_bytes=ref.size_bytes)
        first = make_group(job, [sref])
        await store.put(job, first.group_id, first.SerializeToString(), check_group(first, config.limits, 0),
                        await store.settings(job))
        assert await blobs.refs(job, ref.sha256) == 1 and await blobs.deadline_ms(job, ref.sha256) is None
        batch = await store.get_batch(job, "t", 1, 0, -1, 0)
        await store.ack(job, batch.batch_id, "t", 0)
        # Released, not deleted: an episode still running may show the same screen.
        assert await blobs.refs(job, ref.sha256) == 0
        deadline = await blobs.deadline_ms(job, ref.sha256)
        redis_now = (await redis.time())[0] * 1000
        assert 50_000 < deadline - redis_now <= 61_000
        second = make_group(job, [sref])
        await store.put(job, second.group_id, second.SerializeToString(), check_group(second, config.limits, 0),
                        await store.settings(job))
        assert await blobs.refs(job, ref.sha256) == 1 and await blobs.deadline_ms(job, ref.sha256) is None
    finally:
        await redis.aclose()


def test_a_judges_latency_is_bounded():
    """judge_latency_s (seconds the judge took for an episode's verdict) is kept; NaN, negative or absurd is
    INVALID_ARGUMENT, as for the other numbers of a record."""
    import math

    from asyncwebrl.buffer.errors import InvalidArgument

    limits = BufferConfig().limits
    ref = env_pb2.ScreenshotRef(sha256="a" * 64, width=8, height=8, mime="image/png", size_bytes=10)
    group = make_group("j", [ref])
    group.episodes[0].judged, group.episodes[0].judge_latency_s = True, 2.5
    check_group(group, limits, 0)
    for bad in (-1.0, math.nan, 1e9):
        group.episodes[0].judge_latency_s = bad
        with pytest.raises(InvalidArgument, match="judge_latency_s"):
            check_group(group, limits, 0)
