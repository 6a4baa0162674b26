"""A buffer, weightsync and an engine registered for the job, and groups made from the engine's real outputs.

The trainer does not configure its job in the buffer (the api does): ``trainer_for`` sends ``ConfigureJob``
as the api would, and a trainer that must reach its engine publishes through weightsync (``publishing``)."""

from __future__ import annotations

import pathlib
import shutil
import uuid

import pytest

from asyncwebrl.common.agent.prompt import collapse_image_tokens, prompt_ids, render
from asyncwebrl.common.agent.vision import decode_image, image_tokens, load_processors
from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc
from tests.engine.conftest import call, data_uri
from tests.engine.conftest import png as engine_png

TOKEN = "trainer-token"
PREFIX = "trainer-test:"


def png(seed: int) -> bytes:
    return engine_png(seed, 90, 120)


def post(url: str, path: str, body: dict | None = None) -> dict:
    status, reply = call(url, path, body, key=None)
    assert status == 200, reply
    return reply


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("trainer")
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(SHIPPED / "qwen2_5_vl", models / "base")
    env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password}
    common = ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text"]
    # The buffer's default --claim-idle-s (600 s): a restarted trainer must not depend on it.
    buffer = ServiceProcess("buffer", [*common, "--blob-release-grace-s", "0"], env, logs / "buffer.log")
    # The one publisher: it loads each version into the job's registered engines and catches up restarted ones.
    sync = ServiceProcess("weightsync", [*common, "--registry-ttl-s", "5", "--reconcile-interval-s", "0.5",
                                         "--checkpoint-roots", str(models)], env, logs / "weightsync.log")
    buffer.wait_ready()
    sync.wait_ready()
    ch = channel(buffer.target, TOKEN)
    yield {"buffer": buffer, "stub": buffer_pb2_grpc.BufferServiceStub(ch), "logs": logs, "env": env,
           "common": common, "models": models, "redis": redis_server, "weightsync": sync}
    ch.close()
    assert sync.stop() == 0
    buffer.stop()


def engine_for(stack, job: str) -> EngineProcess:
    r = stack["redis"]
    engine = EngineProcess(
        ["--model-path", str(stack["models"] / "base"), "--model-roots", str(stack["models"]), "--device", "cpu",
         "--registry-redis-url", r.url, "--key-prefix", PREFIX, "--job-id", job, "--endpoint-id", f"engine-{job}",
         "--heartbeat-s", "0.5", "--seed", "1"],
        stack["logs"] / f"engine-{job}.log", env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": r.password},
    )
    engine.wait_ready()
    return engine


def configure(stack, job: str, batch_groups: int = 2, max_staleness: int = 2, keep_zero_variance: bool = False) -> None:
    """The job's settings in the buffer, as the api sends them before it starts a trainer."""
    stack["stub"].ConfigureJob(buffer_pb2.ConfigureJobRequest(
        job_id=job, batch_groups=batch_groups, max_staleness=max_staleness, keep_zero_variance=keep_zero_variance))


def publishing(stack) -> list[str]:
    """Trainer flags that publish each version through the stack's weightsync."""
    return ["--publish", "weightsync", "--weightsync-target", stack["weightsync"].target]


def trainer_for(stack, job: str, checkpoints: pathlib.Path, *extra: str) -> ServiceProcess:
    """A trainer of ``job`` (two groups a batch, the default staleness bound), its job configured first."""
    configure(stack, job)
    svc = ServiceProcess(
        "trainer",
        [*stack["common"], "--job-id", job, "--buffer-target", stack["buffer"].target,
         "--model-path", str(stack["models"] / "base"), "--checkpoint-dir", str(checkpoints), "--device", "cpu",
         "--batch-groups", "2", "--batch-wait-s", "0.5", "--lr", "1e-3", *extra],
        stack["env"], stack["logs"] / f"trainer-{job}.log",
    )
    return svc


class GroupMaker:
    """Groups whose steps are the engine's own samples: prompt ids with the screenshot's
    placeholders, output ids, behaviour logprobs and versions, as the gateway writes them."""

    def __init__(self, stack, engine: EngineProcess, job: str) -> None:
        self.stack, self.engine, self.job = stack, engine, job
        self.tokenizer, self.processor = load_processors(stack["models"] / "base")
        self.image_token = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def step(self, seed: int) -> buffer_pb2.StepRecord:
        data = png(seed)
        ref = self.stack["stub"].PutBlobs(buffer_pb2.PutBlobsRequest(
            job_id=self.job, blobs=[buffer_pb2.BlobData(data=data, mime="image/png", width=120, height=90)])).refs[0]
        image = decode_image(data)
        ids = prompt_ids(self.tokenizer, render("Click the button.", [], 1), self.image_token,
                         [image_tokens(self.processor, image.height, image.width)])
        out = post(self.engine.url, "/generate", {
            "input_ids": collapse_image_tokens(ids, self.image_token), "image_data": [data_uri(data)],
            "sampling_params": {"max_new_tokens": 6, "temperature": 1.0}, "return_logprob": True})
        meta = out["meta_info"]
        lps = [float(lp) for lp, _, _ in meta["output_token_logprobs"]]
        toks = [int(t) for _, t, _ in meta["output_token_logprobs"]]
        version = int(meta.get("weight_version", "0"))
        return buffer_pb2.StepRecord(prompt_ids=ids, screenshots=[ref], output_ids=toks, logprobs=lps,
                                     versions=[version] * len(toks), text=out["text"][:100])

    def group(self, seed: int, rewards=(1.0, 0.0)) -> buffer_pb2.Group:
        episodes = []
        for i, reward in enumerate(rewards):
            n = 1 if reward > 0 else 2
            episodes.append(buffer_pb2.EpisodeRecord(
                episode_id=f"e{i}", steps=[self.step(seed * 10 + i) for _ in range(n)], reward=reward,
                success=reward > 0, length=n, finish_reason="done"))
        return buffer_pb2.Group(group_id=f"g-{uuid.uuid4().hex[:12]}", job_id=self.job, task="t", seed=seed,
                                difficulty="easy", episodes=episodes)

    def put(self, n: int, seed: int = 0) -> list[str]:
        ids = []
        for i in range(n):
            g = self.group(seed + i)
            self.stack["stub"].PutGroup(buffer_pb2.PutGroupRequest(group=g))
            ids.append(g.group_id)
        return ids


def stats(stack, job: str) -> buffer_pb2.BufferStatsResponse:
    return stack["stub"].Stats(buffer_pb2.BufferStatsRequest(job_id=job))
