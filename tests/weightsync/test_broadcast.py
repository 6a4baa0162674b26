"""weightsync --transport broadcast against three real engine processes and real Redis.

weightsync is rank 0 of a gloo group with the engines (SGLang's update-from-distributed API). The
third engine sits behind a loopback proxy that forwards everything, or answers 404 to a route as a
server without it would: so it can be made unable to join, or to take an update. Tests run in order.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import urllib.request

import aiohttp
import pytest
import torch
from aiohttp import web

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess, free_port
from asyncwebrl.common.models.loading import load_policy
from asyncwebrl.common.models.logprobs import Sample, output_logprobs
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import weightsync_pb2, weightsync_pb2_grpc
from tests.engine.conftest import call, prompt
from tests.helpers import wait_until
from tests.weightsync.conftest import API_KEY, JOB, PREFIX, TOKEN, live_ids, make_version, publish, served

TEXT = prompt("Click the button", 0)


class Proxy:
    """Forwards to ``target``; answers 404 to the paths in ``refuse`` (a server without those routes), and
    answers SGLang 0.5.23's session routes itself when ``sessions`` is on (the embedded engine is 0.5.20, the
    deployed SGLang, which has none), recording every path in ``seen``."""

    SESSION = ("/begin_weight_update", "/end_weight_update")

    def __init__(self, port: int) -> None:
        self.port, self.target, self.refuse = port, "", set()
        self.sessions, self.seen = False, []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.Response:
        self.seen.append(request.path)
        if self.sessions and request.path in self.SESSION:
            return web.json_response({"success": True, "message": "Success"})
        if request.path in self.refuse:
            return web.json_response({"detail": "Not Found"}, status=404)
        async with self.session.request(request.method, self.target + request.path_qs, data=await request.read(),
                                        headers={k: v for k, v in request.headers.items() if k.lower() != "host"}) as r:
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _engine(stack, name: str, advertise: str = "") -> EngineProcess:
    r = stack["redis"]
    extra = ["--advertise-url", advertise] if advertise else []
    e = EngineProcess(
        ["--model-path", str(stack["root"] / "base"), "--model-roots", str(stack["root"]), "--device", "cpu",
         "--seed", "3", "--torch-threads", "1", "--registry-redis-url", r.url, "--key-prefix", PREFIX,
         "--job-id", JOB, "--endpoint-id", name, "--heartbeat-s", "0.2", *extra],
        stack["logs"] / f"{name}.log", env={"ASYNCWEBRL_API_KEY": API_KEY,
                                            "ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": r.password})
    e.wait_ready()
    return e


def _forget_the_job(redis_server) -> None:
    """This module's publishes leave the job at version 5 in Redis, which the disk tests' module (same prefix
    and job) would take as newer than its own first versions."""
    import redis

    client = redis.Redis.from_url(redis_server.url, password=redis_server.password)
    for key in client.scan_iter(match=PREFIX + "*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    _forget_the_job(redis_server)
    logs = tmp_path_factory.mktemp("ws-broadcast")
    root = tmp_path_factory.mktemp("wsb-models")
    shutil.copytree(SHIPPED / "qwen2_5_vl", root / "base")
    env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password,
           "ASYNCWEBRL_ENGINE_API_KEY": API_KEY}
    ws = ServiceProcess("weightsync", [
        "--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text", "--transport", "broadcast",
        "--broadcast-host", "127.0.0.1", "--broadcast-timeout-s", "6", "--registry-ttl-s", "2",
        "--reconcile-interval-s", "0.3", "--retries", "1", "--retry-backoff-s", "0.2", "--load-timeout-s", "60",
        "--checkpoint-roots", str(root)], env, logs / "weightsync.log")
    ws.wait_ready()
    ch = channel(ws.target, TOKEN)
    s = {"ws": ws, "stub": weightsync_pb2_grpc.WeightSyncServiceStub(ch), "logs": logs, "root": root,
         "redis": redis_server}
    proxy = Proxy(free_port())
    s["proxy"] = proxy
    s["engines"] = [_engine(s, "engine-0"), _engine(s, "engine-1")]
    third = _engine(s, "engine-2", advertise=f"http://127.0.0.1:{proxy.port}")
    proxy.target = third.url
    s["engines"].append(third)
    yield s
    for e in s["engines"]:
        e.stop()
    proxy.close()
    ch.close()
    ws.stop()
    _forget_the_job(redis_server)


def _generate(engine: EngineProcess) -> tuple[list[int], list[float], str]:
    status, out = call(engine.url, "/generate", {
        "text": TEXT, "return_logprob": True,
        "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}}, key=API_KEY)
    assert status == 200, out
    meta = out["meta_info"]
    return out["output_ids"], [lp for lp, _, _ in meta["output_token_logprobs"]], meta["weight_version"]


def _reference(path, output_ids: list[int]) -> torch.Tensor:
    """The logprobs of the checkpoint at ``path`` as transformers loads it from disk."""
    policy = load_policy(path, device="cpu", dtype="float32")
    ids = policy.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return output_logprobs(policy.model, [Sample(ids, output_ids, None, None)], temperature=1.0)[0]


def _counter(engine: EngineProcess, name: str) -> float:
    text = urllib.request.urlopen(engine.url + "/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _loads(engines) -> list[tuple[float, float]]:
    """(broadcast updates taken, disk loads) per engine."""
    return [(_counter(e, 'asyncwebrl_engine_distributed_weight_updates_total{result="ok"}'),
             _counter(e, "asyncwebrl_engine_weight_updates_total")) for e in engines]


def _all_serve(stack, version: int) -> None:
    engines = stack["engines"]
    assert served(engines) == [str(version)] * 3
    outs = [_generate(e) for e in engines]
    reference = _reference(stack["root"] / "ckpt" / f"v{version:08d}", outs[0][0])
    for ids, lps, v in outs:
        assert v == str(version) and ids == outs[0][0]
        assert torch.allclose(torch.tensor(lps), reference, atol=1e-4), (torch.tensor(lps) - reference).abs().max()


def test_a_version_reaches_every_engine_by_broadcast(stack):
    engines = stack["engines"]
    wait_until(lambda: live_ids(stack) == {"engine-0", "engine-1", "engine-2"}, 30, "three engines registered")
    make_version(stack["root"] / "ckpt", 1, stack["root"] / "base")
    before = _loads(engines)
    reply = publish(stack, 1)
    assert sorted(r.endpoint_id for r in reply.results) == ["engine-0", "engine-1", "engine-2"]
    assert all(r.ok and r.attempts == 1 for r in reply.results), reply
    assert [(b + 1, d) for b, d in before] == _loads(engines), "by broadcast, none from disk"
    _all_serve(stack, 1)
    wait_until(lambda: live_ids(stack) == {"engine-0", "engine-1", "engine-2"}, 10, "all routable at v1")
    # The same group carries the next version.
    make_version(stack["root"] / "ckpt", 2, stack["root"] / "base")
    reply = publish(stack, 2)
    assert all(r.ok for r in reply.results) and [(b + 2, d) for b, d in before] == _loads(engines)
    _all_serve(stack, 2)


def test_a_failed_update_leaves_every_engine_on_one_version(stack):
    """engine-2 answers 404 to the update: the broadcast completes for the others or fails for all
    (it times out); either way whoever missed it loads from disk and all end on the version."""
    engines = stack["engines"]
    stack["proxy"].refuse = {"/update_weights_from_distributed"}
    try:
        make_version(stack["root"] / "ckpt", 3, stack["root"] / "base")
        before = _loads(engines)
        reply = publish(stack, 3)
        assert all(r.ok for r in reply.results), reply
        after = _loads(engines)
        assert after[2] == (before[2][0], before[2][1] + 1), "engine-2 from disk"
        for (b0, d0), (b1, d1) in zip(before[:2], after[:2]):
            assert (b1 - b0) + (d1 - d0) == 1, "each other engine took the version once, one way or the other"
        _all_serve(stack, 3)
    finally:
        stack["proxy"].refuse = set()


def test_an_engine_that_cannot_join_falls_back_to_disk(stack):
    engines = stack["engines"]
    stack["proxy"].refuse = {"/init_weights_update_group"}
    try:
        make_version(stack["root"] / "ckpt", 4, stack["root"] / "base")
        before = _loads(engines)
        reply = publish(stack, 4)  # the group failed last time: rebuilt, without the one that refuses
        assert all(r.ok for r in reply.results), reply
        after = _loads(engines)
        assert after[:2] == [(b + 1, d) for b, d in before[:2]], "the others by broadcast"
        assert after[2] == (before[2][0], before[2][1] + 1), "engine-2 from disk"
        _all_serve(stack, 4)
        status = stack["stub"].Status(weightsync_pb2.StatusRequest(job_id=JOB))
        assert status.published_version == 4
    finally:
        stack["proxy"].refuse = set()


def test_a_server_with_weight_update_sessions_gets_the_update_inside_one(stack):
    """SGLang >= 0.5.23 refuses update_weights_from_distributed outside begin/end_weight_update (without
    receiving: the broadcast would wait for it until its timeout). weightsync opens the session on a server
    that has the routes, after pausing it and before the update, and closes it before continuing it."""
    engines, proxy = stack["engines"], stack["proxy"]
    proxy.sessions, proxy.seen = True, []
    try:
        wait_until(lambda: live_ids(stack) == {"engine-0", "engine-1", "engine-2"}, 30, "three engines routable")
        make_version(stack["root"] / "ckpt", 5, stack["root"] / "base")
        before = _loads(engines)
        reply = publish(stack, 5)
        assert all(r.ok for r in reply.results) and _loads(engines)[2] == (before[2][0] + 1, before[2][1])
        calls = [p for p in proxy.seen if p in ("/pause_generation", *Proxy.SESSION,
                                                "/update_weights_from_distributed", "/continue_generation")]
        assert calls == ["/pause_generation", "/begin_weight_update", "/update_weights_from_distributed",
                         "/end_weight_update", "/continue_generation"], calls
        _all_serve(stack, 5)
    finally:
        proxy.sessions = False
