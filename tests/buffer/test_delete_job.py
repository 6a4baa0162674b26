"""DeleteJob against a real buffer process and a real redis-server: exactly one job's keys go, its blobs
with their references, and the global blob byte counter drops by exactly their bytes."""

from __future__ import annotations

import uuid

import grpc
import pytest

from asyncwebrl.v1 import buffer_pb2
from tests.buffer.conftest import error_of, get_batch, make_group, put_blobs, stats


def _prefix(buffer) -> str:
    args = buffer.proc.args
    return args[args.index("--key-prefix") + 1]


def _keys(r, prefix: str, job: str) -> dict[str, bytes]:
    """Every key of the job, with its DUMP (value and type), for an exact before/after comparison."""
    jp = f"{prefix}job:{job}:"
    names = sorted(k.decode() for k in r.scan_iter(match=jp + "*", count=1000) if k.decode().startswith(jp))
    return {k: r.dump(k) for k in names}


def _fill(stub, r, prefix: str, job: str, tag: str) -> None:
    """A job with everything the buffer keeps: settings, version, running report, groups unread and pending,
    a dead letter, referenced and unreferenced blobs (one with the same bytes as other jobs' blobs)."""
    stub.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=2, max_staleness=4))
    stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=1))
    stub.ReportRunning(buffer_pb2.ReportRunningRequest(job_id=job, gateway="gw-0", running_groups=2))
    shared = put_blobs(stub, job, ["same-bytes-in-every-job"], size=300)
    own = put_blobs(stub, job, [f"{tag}-a", f"{tag}-b"], size=200)
    put_blobs(stub, job, [f"{tag}-unreferenced"], size=100)
    for i in range(3):
        stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, shared + own[i % 2:i % 2 + 1], version=1)))
    header, groups = get_batch(stub, job, groups=2, version=1)  # two pending, one unread
    assert header.groups == 2
    r.xadd(f"{prefix}job:{job}:dead", {"source_id": "0-1", "reason": "test", "gid": "x"})


def test_delete_job_removes_exactly_its_keys(stub, buffer, redis_server):
    r = redis_server.client()
    prefix = _prefix(buffer)
    base = f"dj{uuid.uuid4().hex[:8]}"
    job, longer, shorter = f"{base}-x", f"{base}-x-warm", base  # ids that share a prefix with `job`
    for j in (job, longer, shorter):
        _fill(stub, r, prefix, j, j)
    before = {j: _keys(r, prefix, j) for j in (longer, shorter)}
    s = stats(stub, job)
    assert (s.stream_length, s.stream_pending, s.dead_letters, s.blob_count) == (3, 2, 1, 4)
    total = int(r.get(f"{prefix}blobs:bytes"))
    assert s.blob_bytes == 300 + 200 + 200 + 100 and s.blob_bytes_all_jobs == total
    refs = sum(int(r.hget(f"{prefix}job:{job}:blob:{sha}", "refs"))
               for sha in [k.rsplit(":", 1)[1] for k in _keys(r, prefix, job) if ":blob:" in k])
    assert refs == 3 + 3  # every group holds the shared blob and one of its own
    n_keys = len(_keys(r, prefix, job))

    reply = stub.DeleteJob(buffer_pb2.DeleteJobRequest(job_id=job))
    assert (reply.job_id, reply.groups, reply.pending, reply.dead_letters) == (job, 3, 2, 1)
    assert (reply.blobs, reply.blob_bytes, reply.blob_refs) == (4, s.blob_bytes, refs)
    assert reply.keys == n_keys

    assert _keys(r, prefix, job) == {}, "no key of the deleted job is left"
    assert not r.sismember(f"{prefix}jobs", job)
    assert int(r.get(f"{prefix}blobs:bytes")) == total - s.blob_bytes, "the budget's counter drops by its bytes"
    for j in (longer, shorter):
        assert _keys(r, prefix, j) == before[j], f"job {j} (a prefix-sharing id) kept every key as it was"
        assert r.sismember(f"{prefix}jobs", j)
    after = stats(stub, job)
    assert (after.stream_length, after.groups_accepted, after.blob_count, after.blob_bytes, after.dead_letters,
            after.trainer_version) == (0, 0, 0, 0, 0, 0)
    # The other jobs still work: their batches are there, their blob accounting unchanged.
    assert stats(stub, longer).stream_length == 3 and stats(stub, longer).blob_bytes == s.blob_bytes

    again = stub.DeleteJob(buffer_pb2.DeleteJobRequest(job_id=job))
    assert (again.groups, again.blobs, again.blob_bytes, again.keys) == (0, 0, 0, 0), "a second delete is a no-op"
    assert int(r.get(f"{prefix}blobs:bytes")) == total - s.blob_bytes

    # The job id can be used again from scratch.
    refs2 = put_blobs(stub, job, ["fresh"])
    stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(job, refs2)))
    assert stats(stub, job).stream_length == 1
    stub.DeleteJob(buffer_pb2.DeleteJobRequest(job_id=job))
    for j in (longer, shorter):
        stub.DeleteJob(buffer_pb2.DeleteJobRequest(job_id=j))
    assert int(r.get(f"{prefix}blobs:bytes")) == total - 3 * s.blob_bytes
    assert all(_keys(r, prefix, j) == {} for j in (job, longer, shorter))


def test_delete_of_unknown_job_is_a_no_op(stub):
    reply = stub.DeleteJob(buffer_pb2.DeleteJobRequest(job_id=f"never-{uuid.uuid4().hex[:8]}"))
    assert (reply.groups, reply.blobs, reply.blob_bytes, reply.keys) == (0, 0, 0, 0)


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "x" * 65, "job id"])
def test_delete_job_refuses_a_malformed_id(stub, bad):
    err = error_of(stub.DeleteJob, buffer_pb2.DeleteJobRequest(job_id=bad))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("job_id:")
