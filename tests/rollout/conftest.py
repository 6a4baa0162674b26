"""A module-scoped stack for gateway tests: envfleet (Chromium), buffer, Redis; engines per job."""

from __future__ import annotations

import urllib.request

import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2_grpc
from tests.helpers import start_envfleet_and_buffer
from tests.helpers import wait_until  # noqa: F401 - re-exported to the rollout tests

TOKEN = "rollout-token"
PREFIX = "rollout-test:"
TASK = "miniwob/click-test"


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory, chromium_path):
    """envfleet, buffer and one registered engine, shared by the module's jobs."""
    logs = tmp_path_factory.mktemp("rollout")
    envfleet, buffer, env, common = start_envfleet_and_buffer(redis_server, PREFIX, TOKEN, logs, chromium_path)
    yield {"envfleet": envfleet, "buffer": buffer, "logs": logs, "env": env, "common": common}
    for svc in (buffer, envfleet):
        svc.stop()


def engine_for(stack, redis_server, job: str, *extra: str, name: str = "") -> EngineProcess:
    name = name or f"engine-{job}"
    engine = EngineProcess(
        ["--model-path", str(SHIPPED / "qwen2_5_vl"), "--device", "cpu", "--registry-redis-url", redis_server.url,
         "--key-prefix", PREFIX, "--job-id", job, "--endpoint-id", name, "--heartbeat-s", "0.5", *extra],
        stack["logs"] / f"{name}.log",
        env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": redis_server.password},
    )
    engine.wait_ready()
    return engine


def gateway_for(stack, job: str, *extra: str) -> ServiceProcess:
    svc = ServiceProcess(
        "rollout",
        [*stack["common"], "--job-id", job, "--envfleet-target", stack["envfleet"].target,
         "--buffer-target", stack["buffer"].target, "--tasks", TASK, "--group-size", "2",
         "--max-concurrent-episodes", "4", "--steps-easy", "2", "--max-new-tokens", "12", *extra],
        stack["env"], stack["logs"] / f"rollout-{job}.log",
    )
    svc.wait_ready()
    return svc


def buffer_for(stack):
    ch = channel(stack["buffer"].target, TOKEN)
    return ch, buffer_pb2_grpc.BufferServiceStub(ch)





def metric(svc: ServiceProcess, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + (f"{{{labels}}}" if labels else " ")):
            return float(line.split()[-1])
    return 0.0
