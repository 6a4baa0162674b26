"""The rollout gateway against a real envfleet (Chromium), engine, buffer and Redis."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from transformers import Qwen2VLImageProcessorPil

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

TOKEN = "rollout-token"
PREFIX = "rollout-test:"
TASK = "miniwob/click-test"


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory, chromium_path):
    """envfleet, buffer and one registered engine, shared by the module's jobs."""
    logs = tmp_path_factory.mktemp("rollout")
    env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password}
    common = ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text"]
    envfleet = ServiceProcess("envfleet", [*common, "--browsers", "1", "--contexts-per-browser", "4",
                                           "--task-sources", "miniwob", "--chromium-path", chromium_path],
                              env, logs / "envfleet.log")
    buffer = ServiceProcess("buffer", [*common, "--blob-release-grace-s", "0"], env, logs / "buffer.log")
    envfleet.wait_ready()
    buffer.wait_ready()
    yield {"envfleet": envfleet, "buffer": buffer, "logs": logs, "env": env, "common": common}
    for svc in (buffer, envfleet):
        svc.stop()


def _engine(stack, redis_server, job: str) -> EngineProcess:
    engine = EngineProcess(
        ["--model-path", str(SHIPPED / "qwen2_5_vl"), "--device", "cpu", "--registry-redis-url", redis_server.url,
         "--key-prefix", PREFIX, "--job-id", job, "--endpoint-id", f"engine-{job}", "--heartbeat-s", "0.5"],
        stack["logs"] / f"engine-{job}.log",
        env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": redis_server.password},
    )
    engine.wait_ready()
    return engine


def _gateway(stack, job: str, *extra: str) -> ServiceProcess:
    svc = ServiceProcess(
        "rollout",
        [*stack["common"], "--job-id", job, "--envfleet-target", stack["envfleet"].target,
         "--buffer-target", stack["buffer"].target, "--tasks", TASK, "--group-size", "2",
         "--max-concurrent-episodes", "4", "--steps-easy", "2", "--max-new-tokens", "12", *extra],
        stack["env"], stack["logs"] / f"rollout-{job}.log",
    )
    svc.wait_ready()
    return svc


def _buffer(stack):
    ch = channel(stack["buffer"].target, TOKEN)
    return ch, buffer_pb2_grpc.BufferServiceStub(ch)


def _wait(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_a_short_run_writes_complete_consistent_groups(stack, redis_server):
    job = f"run-{uuid.uuid4().hex[:6]}"
    ch, buf = _buffer(stack)
    # A random policy fails alike in every episode: keep zero-variance groups to look at them.
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=2, max_staleness=2,
                                                    keep_zero_variance=True))
    engine = _engine(stack, redis_server, job)
    gateway = _gateway(stack, job, "--max-groups", "2")
    try:
        assert gateway.proc.wait(180) == 0, gateway.logs()[-3000:]
    finally:
        gateway.stop()
        engine.stop()
    stats = buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job))
    assert stats.groups_accepted == 2 and stats.groups_running == 0, stats
    items = list(buf.GetBatch(buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=2)))
    groups = [i.group for i in items[1:]]
    assert len(groups) == 2
    processor = Qwen2VLImageProcessorPil.from_pretrained(SHIPPED / "qwen2_5_vl", local_files_only=True)
    r = redis_server.client()
    for g in groups:
        assert g.task == TASK and g.difficulty == "easy" and len(g.episodes) == 2
        assert len({e.episode_id for e in g.episodes}) == 2
        for e in g.episodes:
            assert 1 <= e.length == len(e.steps) <= 2 and e.finish_reason in ("step_limit", "done", "answer")
            for s in e.steps:
                assert 1 <= len(s.output_ids) <= 12
                assert len(s.output_ids) == len(s.logprobs) == len(s.versions) and set(s.versions) == {0}
                assert all(lp <= 0 for lp in s.logprobs)
                assert 1 <= len(s.screenshots) <= 2 and s.action
                pads = sum(processor.get_number_of_image_patches(ref.height, ref.width, {}) // 4
                           for ref in s.screenshots)
                assert list(s.prompt_ids).count(5) == pads, "one placeholder per merged patch of every image"
                for ref in s.screenshots:
                    assert r.hget(f"{PREFIX}job:{job}:blob:{ref.sha256}", "data"), "screenshot refs resolve"
    ch.close()


def test_the_gate_holds_until_the_version_moves(stack, redis_server):
    job = f"gate-{uuid.uuid4().hex[:6]}"
    ch, buf = _buffer(stack)
    # B = 1, eta = 0: (0 + v + 1) * 1 - (accepted + running) > 0 admits one group per version.
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=1, max_staleness=0))
    engine = _engine(stack, redis_server, job)
    gateway = _gateway(stack, job, "--gate-poll-s", "0.2")
    try:
        _wait(lambda: buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted == 1)
        time.sleep(3)
        s = buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job))
        assert s.groups_accepted == 1 and s.groups_running == 0 and s.gate_capacity == 0, "held at the bound"
        buf.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=1))
        _wait(lambda: buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted == 2)
        time.sleep(2)
        assert buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted == 2
    finally:
        assert gateway.stop() == 0, gateway.logs()[-3000:]
        engine.stop()
        ch.close()
