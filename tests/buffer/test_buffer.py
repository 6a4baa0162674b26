"""BufferService against a real buffer process and a real redis-server."""

from __future__ import annotations

import math
import zlib
import time
import urllib.request

import grpc
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc
from tests.buffer.conftest import error_of, get_batch, make_group, put_blobs, stats


def _blob_refs(redis_server, buffer_prefix: str, job: str, sha: str) -> int | None:
    value = redis_server.client().hget(f"{buffer_prefix}job:{job}:blob:{sha}", "refs")
    return None if value is None else int(value)


def _prefix(buffer) -> str:
    args = buffer.proc.args
    return args[args.index("--key-prefix") + 1]


def test_group_round_trip_counts_and_blob_release(stub, buffer, redis_server, job):
    refs = put_blobs(stub, job, ["first", "second"])
    sent = make_group(job, refs)
    reply = stub.PutGroup(buffer_pb2.PutGroupRequest(group=sent))
    assert not reply.duplicate and reply.entry_id
    prefix = _prefix(buffer)
    # One reference per group, however many steps show the screenshot.
    assert _blob_refs(redis_server, prefix, job, refs[0].sha256) == 1

    s = stats(stub, job)
    assert (s.groups_accepted, s.steps_accepted, s.stream_length, s.blob_count) == (1, 4, 1, 2)
    assert s.group_bytes == sent.ByteSize()

    header, groups = get_batch(stub, job)
    assert header.groups == 1 and header.steps == 4 and header.batch_id
    assert groups == [sent], "the trainer gets exactly what the gateway stored"
    assert stats(stub, job).stream_pending == 1

    ack = stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-0"))
    assert (ack.groups, ack.lost, ack.already_acked) == (1, 0, False)
    s = stats(stub, job)
    assert (s.groups_consumed, s.steps_consumed, s.stream_length, s.stream_pending) == (1, 4, 0, 0)
    assert s.group_bytes == 0
    # This buffer releases at once (grace 0): the last group is gone, so are its blobs.
    assert (s.blob_count, s.blob_bytes) == (0, 0)
    assert _blob_refs(redis_server, prefix, job, refs[0].sha256) is None

    again = stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-0"))
    assert (again.groups, again.already_acked) == (0, True)
    assert stats(stub, job).groups_consumed == 1
    header, groups = get_batch(stub, job)
    assert (header.groups, header.batch_id, groups) == (0, "", [])


def test_put_group_is_idempotent(stub, job):
    refs = put_blobs(stub, job, ["a"])
    group = make_group(job, refs, group_id="retried-group")
    first = stub.PutGroup(buffer_pb2.PutGroupRequest(group=group))
    second = stub.PutGroup(buffer_pb2.PutGroupRequest(group=group))
    assert not first.duplicate and second.duplicate and second.entry_id == first.entry_id
    s = stats(stub, job)
    assert (s.groups_accepted, s.groups_duplicate, s.stream_length) == (1, 1, 1)


def _mutations():
    """(name, mutate(group), field the error must name)."""

    def step(g):
        return g.episodes[0].steps[0]

    def set_attr(obj_of, attr, value):
        def mutate(g):
            setattr(obj_of(g), attr, value)
        return mutate

    def extend(obj_of, attr, values):
        def mutate(g):
            getattr(obj_of(g), attr).extend(values)
        return mutate

    return [
        ("logprobs length", extend(step, "logprobs", [-1.0]), "episodes[0].steps[0].logprobs"),
        ("versions length", extend(step, "versions", [0]), "episodes[0].steps[0].versions"),
        ("length field", set_attr(lambda g: g.episodes[1], "length", 5), "episodes[1].length"),
        ("long prompt", extend(lambda g: g.episodes[1].steps[0], "prompt_ids", [0] * 70000),
         "episodes[1].steps[0].prompt_ids"),
        ("future version", lambda g: step(g).versions.__setitem__(4, 99), "episodes[0].steps[0].versions"),
        ("nan reward", set_attr(lambda g: g.episodes[0], "reward", math.nan), "episodes[0].reward"),
        ("positive logprob", lambda g: step(g).logprobs.__setitem__(0, 3.0), "episodes[0].steps[0].logprobs"),
        ("no output", lambda g: [step(g).ClearField(f) for f in ("output_ids", "logprobs", "versions")],
         "episodes[0].steps[0].output_ids"),
        ("bad group id", set_attr(lambda g: g, "group_id", "a b"), "group.group_id"),
        ("bad difficulty", set_attr(lambda g: g, "difficulty", "extreme"), "group.difficulty"),
        ("no episodes", lambda g: g.ClearField("episodes"), "group.episodes"),
        ("duplicate episode", set_attr(lambda g: g.episodes[1], "episode_id", "ep0"), "episodes[1].episode_id"),
        ("bad digest", lambda g: setattr(step(g).screenshots[0], "sha256", "zz" * 32),
         "episodes[0].steps[0].screenshots[0].sha256"),
        ("unknown blob", lambda g: setattr(g.episodes[1].steps[1].screenshots[0], "sha256", "ab" * 32),
         "episodes[1].steps[1].screenshots[0].sha256"),
        ("too many steps", lambda g: g.episodes[0].steps.extend([step(g)] * 200), "episodes[0].steps"),
        ("bad job", set_attr(lambda g: g, "job_id", "../x"), "group.job_id"),
    ]


@pytest.mark.parametrize(("name", "mutate", "field"), _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_groups_are_refused_and_nothing_is_stored(stub, buffer, redis_server, job, name, mutate, field):
    refs = put_blobs(stub, job, ["m"])
    group = make_group(job, refs)
    mutate(group)
    err = error_of(stub.PutGroup, buffer_pb2.PutGroupRequest(group=group))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in err.details(), err.details()
    s = stats(stub, job)
    assert (s.groups_accepted, s.stream_length) == (0, 0)
    assert _blob_refs(redis_server, _prefix(buffer), job, refs[0].sha256) == 0, "no reference was taken"
    # The same group id is still free: a corrected retry stores.
    fixed = make_group(job, refs, group_id=group.group_id if name not in ("bad group id",) else None)
    assert not stub.PutGroup(buffer_pb2.PutGroupRequest(group=fixed)).duplicate


def test_versions_may_go_down_inside_an_episode_and_staleness_takes_the_oldest(stub, job):
    """With several engines a step served by an updated engine can be followed by one served by an
    engine not yet updated, and a resumed generation can move to an older engine mid-step."""
    refs = put_blobs(stub, job, ["v"])
    stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=3))
    group = make_group(job, refs, version=3)
    group.episodes[0].steps[0].versions[:] = [3, 3, 2, 2, 2]   # within a step
    group.episodes[1].steps[1].versions[:] = [1, 1, 1, 1, 1]   # across steps: 3 then 1
    assert not stub.PutGroup(buffer_pb2.PutGroupRequest(group=group)).duplicate
    header, groups = get_batch(stub, job, version=3, max_staleness=1)
    assert groups == [] and header.rejected[0].reason == "stale", "its oldest token (1) is 2 versions behind"


def test_undecodable_request_is_invalid_argument(buffer):
    ch = channel(buffer.target, "test-token")
    call = ch.unary_unary("/asyncwebrl.v1.BufferService/PutGroup")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "group" in info.value.details()
    ch.close()


def test_stale_groups_are_rejected_counted_and_release_blobs(stub, buffer, redis_server, job):
    old_refs = put_blobs(stub, job, ["old"])
    new_refs = put_blobs(stub, job, ["new"])
    stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=3))
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, old_refs, version=1)))
    fresh = make_group(job, new_refs, version=3)
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=fresh))

    # Version 4 with eta 2: tokens from version 1 are 3 behind, version 3 is 1 behind.
    header, groups = get_batch(stub, job, version=4, max_staleness=2)
    assert groups == [fresh]
    assert {r.reason: r.groups for r in header.rejected} == {"stale": 1}
    s = stats(stub, job)
    assert {r.reason: r.groups for r in s.rejected} == {"stale": 1}
    assert _blob_refs(redis_server, _prefix(buffer), job, old_refs[0].sha256) is None, "stale blobs released"
    assert _blob_refs(redis_server, _prefix(buffer), job, new_refs[0].sha256) == 1
    # The job's configured bound applies when the request says -1 (default eta 2).
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, new_refs, version=3)))
    header, groups = get_batch(stub, job, version=6)
    assert not groups and {r.reason: r.groups for r in header.rejected} == {"stale": 1}


def test_zero_variance_groups_dropped_or_kept_per_job(stub, job):
    refs = put_blobs(stub, job, ["zv"])
    stub.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=4, max_staleness=2))
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, refs, rewards=(1.0, 1.0))))
    header, groups = get_batch(stub, job)
    assert not groups and {r.reason: r.groups for r in header.rejected} == {"zero_variance": 1}

    stub.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=4, max_staleness=2,
                                                     keep_zero_variance=True))
    refs = put_blobs(stub, job, ["zv"])  # released at once (grace 0) with the dropped group
    kept = make_group(job, refs, rewards=(0.0, 0.0))
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=kept))
    header, groups = get_batch(stub, job)
    assert groups == [kept] and header.zero_variance_kept == 1
    s = stats(stub, job)
    assert s.zero_variance_kept == 1 and {r.reason: r.groups for r in s.rejected} == {"zero_variance": 1}
    assert s.keep_zero_variance and s.batch_groups == 4


def test_a_restarted_consumer_takes_back_its_own_unacked_entries_first(stub, job):
    refs = put_blobs(stub, job, ["o"])
    old = [make_group(job, refs) for _ in range(2)]
    for g in old:
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=g))
    _, read = get_batch(stub, job, consumer="trainer-a", groups=2)
    assert len(read) == 2
    # trainer-a dies; newer groups arrive; it restarts under the same name, well inside the claim timeout.
    new = [make_group(job, refs) for _ in range(2)]
    for g in new:
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=g))
    header, groups = get_batch(stub, job, consumer="trainer-a", groups=2, take_own_pending=True)
    assert [g.group_id for g in groups] == [g.group_id for g in old], "its own, oldest first, before newer ones"
    assert header.reclaimed == 2
    assert stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-a")).groups == 2
    header, groups = get_batch(stub, job, consumer="trainer-a", groups=4, take_own_pending=True)
    assert sorted(g.group_id for g in groups) == sorted(g.group_id for g in new), "acked ones never come back"


def test_unacked_batch_goes_to_another_consumer_and_is_trained_once(stub, job):
    refs = put_blobs(stub, job, ["c"])
    sent = [make_group(job, refs) for _ in range(3)]
    for g in sent:
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=g))
    dead_header, dead_groups = get_batch(stub, job, consumer="trainer-a", groups=3)
    assert len(dead_groups) == 3
    # trainer-a dies without acking. Before the idle timeout nobody else gets them.
    header, groups = get_batch(stub, job, consumer="trainer-b")
    assert not groups
    time.sleep(1.3)
    header, groups = get_batch(stub, job, consumer="trainer-b")
    assert header.reclaimed == 3 and sorted(g.group_id for g in groups) == sorted(g.group_id for g in sent)
    ack = stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-b"))
    assert ack.groups == 3
    # trainer-a comes back and acks its old batch: nothing of it is still its to ack.
    late = stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=dead_header.batch_id, consumer="trainer-a"))
    assert (late.groups, late.lost) == (0, 3)
    assert stats(stub, job).groups_consumed == 3
    time.sleep(1.3)
    assert get_batch(stub, job, consumer="trainer-c")[1] == [], "an acked group is never delivered again"


def test_batches_wait_and_cap_at_the_requested_size(stub, job):
    refs = put_blobs(stub, job, ["w"])
    for _ in range(5):
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, refs)))
    header, groups = get_batch(stub, job, groups=3)
    assert len(groups) == 3
    started = time.monotonic()
    header, groups = get_batch(stub, job, groups=3, wait_ms=600)
    assert len(groups) == 2 and time.monotonic() - started >= 0.5, "waited for a third group, then returned two"


def test_invalid_entries_go_to_dead_letters(stub, buffer, redis_server, job):
    refs = put_blobs(stub, job, ["d"])
    good = make_group(job, refs)
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=good))
    # Something wrote garbage into the stream (an old format, a bug, disk corruption).
    r = redis_server.client()
    stream = f"{_prefix(buffer)}job:{job}:groups"
    r.set(f"{_prefix(buffer)}job:{job}:data:broken", b"\xff\xff\xff")
    r.xadd(stream, {"gid": "broken", "minv": 0, "steps": 1, "zv": 0, "blobs": "",
                    "crc": zlib.crc32(b"what was stored")})
    r.xadd(stream, {"gid": "old-format", "data": b"", "minv": 0})
    header, groups = get_batch(stub, job)
    assert groups == [good], "valid groups are not held up by a bad one"
    stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-0"))
    assert stats(stub, job).dead_letters == 0
    # Delivered again after the claim timeout; the second failure (max 2) dead-letters it.
    time.sleep(1.3)
    header, groups = get_batch(stub, job, consumer="trainer-1")
    assert not groups
    s = stats(stub, job)
    assert (s.dead_letters, s.stream_length, s.stream_pending) == (2, 0, 0)
    dead = r.xrange(f"{_prefix(buffer)}job:{job}:dead")
    assert dead[0][1][b"gid"] == b"broken" and b"checksum" in dead[0][1][b"reason"]
    assert dead[0][1][b"data"] == b"\xff\xff\xff", "the dead letter keeps the payload for inspection"
    assert not r.exists(f"{_prefix(buffer)}job:{job}:data:broken")
    assert dead[1][1][b"gid"] == b"old-format" and b"missing fields" in dead[1][1][b"reason"]


def test_stream_cap_is_backpressure(stub, job):
    refs = put_blobs(stub, job, ["cap"])
    reply = stub.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=2, max_staleness=0,
                                                             max_stream_groups=2))
    assert reply.max_stream_groups == 2
    for _ in range(2):
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, refs)))
    err = error_of(stub.PutGroup, buffer_pb2.PutGroupRequest(group=make_group(job, refs)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "cap" in err.details()
    assert stats(stub, job).stream_length == 2


def test_gate_counters_running_reports_and_versions(stub, job):
    refs = put_blobs(stub, job, ["gate"])
    stub.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=2, max_staleness=1))
    # (eta + v + 1) * B - (accepted + running) = (1 + 0 + 1) * 2 - 0
    assert stats(stub, job).gate_capacity == 4
    stub.ReportRunning(buffer_pb2.ReportRunningRequest(job_id=job, gateway="gw-1", running_groups=2))
    stub.ReportRunning(buffer_pb2.ReportRunningRequest(job_id=job, gateway="gw-2", running_groups=1, ttl_s=1))
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, refs)))
    s = stats(stub, job)
    assert (s.groups_running, s.gate_capacity) == (3, 0)
    time.sleep(1.2)
    s = stats(stub, job)
    assert (s.groups_running, s.gate_capacity) == (2, 1), "gw-2's report expired"

    assert stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=5)).version == 5
    err = error_of(stub.SetTrainerVersion, buffer_pb2.SetTrainerVersionRequest(job_id=job, version=4))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "never decrease" in err.details()
    header, _ = get_batch(stub, job, version=5, max_staleness=9)
    ack = stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="trainer-0",
                                         trainer_version=6))
    assert ack.groups == 1
    s = stats(stub, job)
    assert s.trainer_version == 6 and s.gate_capacity == (1 + 6 + 1) * 2 - (1 + 2)


def test_bad_requests_name_the_field(stub, job):
    cases = [
        (stub.Ack, buffer_pb2.AckRequest(job_id=job, batch_id="0" * 32, consumer="t"), grpc.StatusCode.NOT_FOUND,
         "batch_id"),
        (stub.Ack, buffer_pb2.AckRequest(job_id=job, batch_id="../", consumer="t"),
         grpc.StatusCode.INVALID_ARGUMENT, "batch_id"),
        (stub.ConfigureJob, buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=0),
         grpc.StatusCode.INVALID_ARGUMENT, "batch_groups"),
        (stub.ConfigureJob, buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=8, max_stream_groups=2),
         grpc.StatusCode.INVALID_ARGUMENT, "max_stream_groups"),
        (stub.ReportRunning, buffer_pb2.ReportRunningRequest(job_id=job, gateway="", running_groups=1),
         grpc.StatusCode.INVALID_ARGUMENT, "gateway"),
        (stub.PutBlobs, buffer_pb2.PutBlobsRequest(job_id=job), grpc.StatusCode.INVALID_ARGUMENT, "blobs"),
        (stub.PutBlobs, buffer_pb2.PutBlobsRequest(job_id=job, blobs=[buffer_pb2.BlobData(
            data=b"x", mime="image/gif", width=1, height=1)]), grpc.StatusCode.INVALID_ARGUMENT, "blobs.mime"),
        (stub.Stats, buffer_pb2.BufferStatsRequest(job_id=""), grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ]
    for call, request, code, field in cases:
        err = error_of(call, request)
        assert err.code() == code and field in err.details(), (field, err.details())
    for request, field in [
        (buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=0), "groups"),
        (buffer_pb2.GetBatchRequest(job_id=job, consumer="a b", groups=1), "consumer"),
        (buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=1, max_staleness=-2), "max_staleness"),
        (buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=1, wait_ms=10**9), "wait_ms"),
    ]:
        err = error_of(lambda r: list(stub.GetBatch(r)), request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.details()
    # Another consumer's batch.
    refs = put_blobs(stub, job, ["x"])
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, refs)))
    header, _ = get_batch(stub, job, consumer="owner")
    err = error_of(stub.Ack, buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="thief"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "consumer" in err.details()


def test_blobs_batched_put_and_streamed_get(stub, job):
    refs = put_blobs(stub, job, ["p1", "p2", "p1"], size=100_000)
    assert refs[0] == refs[2] and refs[0].sha256 != refs[1].sha256 and refs[0].size_bytes == 100_000
    items = list(stub.GetBlobs(buffer_pb2.GetBlobsRequest(job_id=job, sha256=[refs[1].sha256, "0" * 64,
                                                                             refs[0].sha256])))
    assert [(i.sha256, i.found) for i in items] == [(refs[1].sha256, True), ("0" * 64, False), (refs[0].sha256, True)]
    assert len(items[0].blob.data) == 100_000 and items[0].blob.mime == "image/png"
    assert stats(stub, job).blob_count == 2


def test_large_batches_stream_past_the_default_message_limit(stub, job):
    refs = put_blobs(stub, job, ["big"])
    for _ in range(6):
        # ~1 MB each: a 6-group batch would pass gRPC's default 4 MB as one message.
        g = make_group(job, refs, rewards=(1.0, 0.0, 0.5, 0.25), steps=8, prompt_tokens=16000)
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=g))
    header, groups = get_batch(stub, job, groups=6)
    assert len(groups) == 6 and header.steps == 6 * 4 * 8
    assert sum(g.ByteSize() for g in groups) > 4 * 1024 * 1024


def test_auth_metrics_and_health(buffer, job, stub):
    ch = channel(buffer.target, "wrong-token")
    err = error_of(buffer_pb2_grpc.BufferServiceStub(ch).Stats, buffer_pb2.BufferStatsRequest(job_id=job))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    ch.close()
    stub.PutBlobs(buffer_pb2.PutBlobsRequest(job_id=job, blobs=[buffer_pb2.BlobData(
        data=b"m" * 10, mime="image/png", width=1, height=1)]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{buffer.http_port}/metrics").read().decode()
        if f'asyncwebrl_buffer_blobs{{job="{job}"}} 1.0' in text:
            break
        time.sleep(0.2)
    assert f'asyncwebrl_buffer_blobs{{job="{job}"}} 1.0' in text, "the sweeper refreshes per-job gauges"
    assert "asyncwebrl_buffer_gate_capacity" in text and "grpc_server_handled_total" in text
    assert urllib.request.urlopen(f"http://127.0.0.1:{buffer.http_port}/readyz").status == 200
