"""Three real engines registered for one job, a real weightsync, real Redis; versions on disk."""

from __future__ import annotations

import asyncio
import pathlib
import shutil

import grpc
import pytest
import torch

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.common.registry import Registry
from asyncwebrl.common.weights import write_version_from
from asyncwebrl.v1 import weightsync_pb2, weightsync_pb2_grpc
from tests.engine.conftest import call, data_uri, png, prompt

TOKEN = "ws-token"
API_KEY = "ws-engine-key"
PREFIX = "ws-test:"
JOB = "wsjob"


def make_version(root: pathlib.Path, version: int, base: pathlib.Path) -> pathlib.Path:
    """``base`` with every weight nudged by a version-seeded amount: a distinct policy per version."""
    gen = torch.Generator().manual_seed(version)

    def nudge(name: str, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        return t + 0.05 * torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)

    return write_version_from(base, root, version, nudge)[1]


def start_engine(stack, name: str, register: bool = True) -> EngineProcess:
    r = stack["redis"]
    registry = ["--registry-redis-url", r.url, "--key-prefix", PREFIX, "--job-id", JOB, "--endpoint-id", name,
                "--heartbeat-s", "0.2"] if register else []
    engine = EngineProcess(
        ["--model-path", str(stack["root"] / "base"), "--model-roots", str(stack["root"]), "--device", "cpu",
         "--seed", "3", *registry],
        stack["logs"] / f"{name}.log",
        env={"ASYNCWEBRL_API_KEY": API_KEY, "ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": r.password},
    )
    engine.wait_ready()
    return engine


def model_info(engine: EngineProcess) -> dict:
    status, info = call(engine.url, "/model_info", key=API_KEY)
    assert status == 200, info
    return info


def served(engines) -> list[str]:
    return [model_info(e)["weight_version"] for e in engines]


def sample(engine: EngineProcess) -> list[float]:
    """Greedy logprobs of a fixed prompt and image: a fingerprint of the weights served."""
    status, out = call(engine.url, "/generate", {
        "text": prompt("Click the button"), "image_data": [data_uri(png(5, 56, 56))],
        "sampling_params": {"max_new_tokens": 4, "temperature": 0.0}, "return_logprob": True,
    }, key=API_KEY)
    assert status == 200, out
    return [round(lp, 4) for lp, _, _ in out["meta_info"]["output_token_logprobs"]]


def pauses(engine: EngineProcess) -> float:
    import urllib.request

    text = urllib.request.urlopen(engine.url + "/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("asyncwebrl_engine_pauses_total"))


def registry_view(stack, fn):
    """Run ``fn(registry)`` against the job's registry on a fresh event loop."""
    async def run():
        redis = make_redis(stack["redis"].url, stack["redis"].password)
        try:
            return await fn(Registry(redis, PREFIX, JOB, ttl_s=2.0))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def live_ids(stack) -> set[str]:
    return {e.endpoint_id for e in registry_view(stack, lambda reg: reg.live())}


def publish(stack, version: int, path: pathlib.Path | None = None, checksum: str = "", job: str = JOB):
    path = path if path is not None else stack["root"] / "ckpt" / f"v{version:08d}"
    return stack["stub"].Publish(weightsync_pb2.PublishRequest(job_id=job, version=version, path=str(path),
                                                               manifest_checksum=checksum), timeout=120)


def publish_error(stack, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        publish(stack, *args, **kwargs)
    return info.value


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("weightsync")
    root = tmp_path_factory.mktemp("ws-models")
    shutil.copytree(SHIPPED / "qwen2_5_vl", root / "base")
    env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password,
           "ASYNCWEBRL_ENGINE_API_KEY": API_KEY}
    ws = ServiceProcess("weightsync", [
        "--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text",
        "--registry-ttl-s", "2", "--reconcile-interval-s", "0.3", "--retries", "1", "--retry-backoff-s", "0.2",
        "--load-timeout-s", "60", "--checkpoint-roots", str(root), "--concurrency", "2"], env, logs / "weightsync.log")
    ws.wait_ready()
    ch = channel(ws.target, TOKEN)
    s = {"ws": ws, "stub": weightsync_pb2_grpc.WeightSyncServiceStub(ch), "logs": logs, "root": root,
         "redis": redis_server, "env": env}
    s["engines"] = [start_engine(s, f"engine-{i}") for i in range(3)]
    yield s
    for e in s["engines"]:
        e.stop()
    ch.close()
    ws.stop()
