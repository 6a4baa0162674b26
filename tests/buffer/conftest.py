from __future__ import annotations

import hashlib
import pathlib
import uuid

import grpc
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import ServiceProcess
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc, env_pb2

TOKEN = "test-token"


def start_buffer(tmp_path: pathlib.Path, redis_server, *extra: str, name: str = "buffer") -> ServiceProcess:
    svc = ServiceProcess(
        "buffer",
        ["--redis-url", redis_server.url, "--log-format", "text", *extra],
        {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
        tmp_path / f"{name}.log",
    )
    svc.wait_ready()
    return svc


def stub_for(svc: ServiceProcess) -> tuple[grpc.Channel, buffer_pb2_grpc.BufferServiceStub]:
    ch = channel(svc.target, TOKEN)
    return ch, buffer_pb2_grpc.BufferServiceStub(ch)


@pytest.fixture(scope="module")
def buffer(redis_server, tmp_path_factory):
    """One buffer per module: blobs freed at once on release, a short claim timeout."""
    svc = start_buffer(
        tmp_path_factory.mktemp("buffer"),
        redis_server,
        "--key-prefix", f"t{uuid.uuid4().hex[:6]}:",
        "--blob-release-grace-s", "0",
        "--claim-idle-s", "1",
        "--max-deliveries", "2",
        "--sweep-interval-s", "0.5",
    )
    yield svc
    assert svc.stop() == 0, svc.logs()


@pytest.fixture(scope="module")
def stub(buffer):
    ch, s = stub_for(buffer)
    yield s
    ch.close()


@pytest.fixture
def job() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


def png(tag: str, size: int = 64) -> buffer_pb2.BlobData:
    """Distinct bytes per tag; the buffer stores bytes, it does not decode images."""
    seed = hashlib.sha256(tag.encode()).digest()
    return buffer_pb2.BlobData(data=(seed * (size // 32 + 1))[:size], mime="image/png", width=8, height=8)


def put_blobs(stub, job: str, tags: list[str], size: int = 64) -> list[env_pb2.ScreenshotRef]:
    reply = stub.PutBlobs(buffer_pb2.PutBlobsRequest(job_id=job, blobs=[png(t, size) for t in tags]))
    return list(reply.refs)


def make_group(
    job: str,
    refs: list[env_pb2.ScreenshotRef],
    *,
    group_id: str | None = None,
    rewards: tuple[float, ...] = (1.0, 0.0),
    steps: int = 2,
    version: int = 0,
    prompt_tokens: int = 40,
    output_tokens: int = 5,
) -> buffer_pb2.Group:
    """A small but complete group: every step shows every ref in its prompt."""
    episodes = []
    for i, reward in enumerate(rewards):
        records = [
            buffer_pb2.StepRecord(
                prompt_ids=[(7 * i + 3 * j + t) % 1000 for t in range(prompt_tokens)],
                screenshots=refs,
                output_ids=[100 + t for t in range(output_tokens)],
                logprobs=[-0.5] * output_tokens,
                versions=[version] * output_tokens,
                text=f"<tool_call>step {j}</tool_call>",
                action='{"name": "click"}',
            )
            for j in range(steps)
        ]
        episodes.append(
            buffer_pb2.EpisodeRecord(
                episode_id=f"ep{i}", steps=records, reward=reward, success=reward > 0, length=steps,
                finish_reason="answer",
            )
        )
    return buffer_pb2.Group(
        group_id=group_id or f"g-{uuid.uuid4().hex[:12]}", job_id=job, task="webgym-lite/shop-buy",
        seed=3, difficulty="easy", episodes=episodes, created_unix_ms=1,
    )


def get_batch(stub, job: str, consumer: str = "trainer-0", groups: int = 16, version: int = 0,
              max_staleness: int = -1, wait_ms: int = 0,
              take_own_pending: bool = False) -> tuple[buffer_pb2.BatchHeader, list[buffer_pb2.Group]]:
    items = list(stub.GetBatch(buffer_pb2.GetBatchRequest(
        job_id=job, consumer=consumer, groups=groups, current_version=version,
        max_staleness=max_staleness, wait_ms=wait_ms, take_own_pending=take_own_pending,
    )))
    assert items[0].WhichOneof("item") == "header"
    header = items[0].header
    got = [i.group for i in items[1:]]
    assert all(i.WhichOneof("item") == "group" for i in items[1:]) and len(got) == header.groups
    return header, got


def stats(stub, job: str) -> buffer_pb2.BufferStatsResponse:
    return stub.Stats(buffer_pb2.BufferStatsRequest(job_id=job))


def error_of(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value
