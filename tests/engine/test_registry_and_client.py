"""Engines in the registry and the gateway's inference client, against two real engines."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from asyncwebrl.common.agent.prompt import collapse_image_tokens, prompt_ids
from asyncwebrl.common.agent.vision import decode_image, process_images
from asyncwebrl.common.inference import BadGeneration, InferenceClient, NoEndpoint, token_versions
from asyncwebrl.common.models.loading import load_policy
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.common.registry import Registry
from asyncwebrl.common.localstack import EngineProcess
from tests.engine.conftest import API_KEY, call, data_uri, png, prompt
from tests.engine.test_engine import _perturbed_checkpoint

PREFIX = "reg-test:"


def _engine(models_root, log_dir, redis_server, job: str, name: str, *extra: str) -> EngineProcess:
    engine = EngineProcess(
        ["--model-path", str(models_root / "qwen2_5_vl"), "--model-roots", str(models_root), "--device", "cpu",
         "--registry-redis-url", redis_server.url, "--key-prefix", PREFIX, "--job-id", job,
         "--endpoint-id", name, "--heartbeat-s", "0.3", *extra],
        log_dir / f"{name}.log",
        env={"ASYNCWEBRL_API_KEY": API_KEY, "ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": redis_server.password},
    )
    return engine


@pytest.fixture
def pair(models_root, tmp_path, redis_server):
    job = f"j{uuid.uuid4().hex[:8]}"
    engines = [_engine(models_root, tmp_path, redis_server, job, f"engine-{i}") for i in range(2)]
    for e in engines:  # started together, so they load in parallel
        e.wait_ready()
    yield job, engines
    for e in engines:
        e.stop()


async def _client(redis_server, job: str, **kw) -> tuple[InferenceClient, Registry]:
    redis = make_redis(redis_server.url, redis_server.password)
    registry = Registry(redis, PREFIX, job, ttl_s=1.5)
    return InferenceClient(registry, api_key=API_KEY, refresh_s=0.2, **kw), registry


def _ids(n: int = 12) -> list[int]:
    return [20 + i for i in range(n)]


async def test_engines_register_heartbeat_and_leave(pair, redis_server):
    job, engines = pair
    client, registry = await _client(redis_server, job)
    live = await registry.live()
    assert [e.endpoint_id for e in live] == ["engine-0", "engine-1"]
    assert all(e.url == engines[i].url and e.weight_version == "0" for i, e in enumerate(live))
    # Paused: alive but not ready, so no new work goes there.
    call(engines[0].url, "/pause_generation", {"mode": "in_place"})
    await asyncio.sleep(0.8)
    assert [e.endpoint_id for e in await registry.live()] == ["engine-1"]
    call(engines[0].url, "/continue_generation", {})
    # SIGTERM: the engine removes itself; SIGKILL: its heartbeat goes stale.
    engines[0].stop()
    await asyncio.sleep(0.5)
    assert [e.endpoint_id for e in await registry.all()] == ["engine-1"]
    engines[1].stop(signal.SIGKILL)
    await asyncio.sleep(2.0)
    assert await registry.live() == [] and [e.endpoint_id for e in await registry.all()] == ["engine-1"]
    client.wait_for_endpoint_s = 0.5
    with pytest.raises(NoEndpoint):
        await client.generate(_ids(), [], {"max_new_tokens": 2})
    await client.close()
    await registry.redis.aclose()


async def test_requests_spread_and_survive_an_engine_killed_mid_run(pair, redis_server):
    job, engines = pair
    # The killed engine is found by its refused connection, not by a timeout: the timeout leaves room for
    # engine-1 to finish all twelve requests on a loaded machine (with 30 s, a CI run at load 10-19 timed one
    # out on engine-1 and retried it there).
    client, registry = await _client(redis_server, job, timeout_s=180, cooldown_s=30)
    params = {"max_new_tokens": 300, "temperature": 0, "ignore_eos": True}

    async def one(i: int):
        return await client.generate(_ids(8 + i % 5), [], params, rid=f"r{i}")

    tasks = [asyncio.create_task(one(i)) for i in range(12)]
    deadline = time.monotonic() + 30
    while (await asyncio.to_thread(call, engines[0].url, "/model_info"))[1]["running"] == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    engines[0].stop(signal.SIGKILL)
    results = await asyncio.gather(*tasks)
    assert all(len(r.output_ids) == 300 == len(r.logprobs) == len(r.versions) for r in results), "none lost"
    first = {(r.failed_on + r.endpoints)[0] for r in results}
    assert first == {"engine-0", "engine-1"}, "least outstanding spreads the load"
    moved = [r for r in results if r.retries]
    assert moved and all(r.failed_on == ["engine-0"] and r.endpoints == ["engine-1"] for r in moved), \
        "the killed engine's requests moved"
    # Greedy: a retried request ends with the same tokens as one that never failed.
    again = await client.generate(_ids(8), [], params)
    assert again.output_ids == results[0].output_ids
    await client.close()
    await registry.redis.aclose()


async def test_a_weight_update_mid_generation_is_resumed_with_versions(pair, redis_server, models_root):
    job, engines = pair
    engines[1].stop()  # one endpoint, so the update surely hits the request
    client, registry = await _client(redis_server, job)
    v7 = _perturbed_checkpoint(models_root, "v7", 0.3)
    # As the gateway sends it: one pad per image, the expansion checked on every call, the resume included.
    policy = load_policy(models_root / "qwen2_5_vl", device="cpu", dtype="float32")
    batch = process_images(policy.image_processor, [decode_image(png(4))])
    expanded = prompt_ids(policy.tokenizer, prompt("Resume me", 1), policy.image_token_id, batch.token_counts)
    task = asyncio.create_task(client.generate(
        collapse_image_tokens(expanded, policy.image_token_id), [data_uri(png(4))],
        {"max_new_tokens": 400, "temperature": 0, "ignore_eos": True}, expanded_ids=expanded))
    deadline = time.monotonic() + 30
    while call(engines[0].url, "/model_info")[1]["running"] == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    # The documented order for a weight update: pause (abort), update, continue.
    assert (await asyncio.to_thread(call, engines[0].url, "/pause_generation", {"mode": "abort"}))[1]["aborted"] == 1
    status, _ = await asyncio.to_thread(call, engines[0].url, "/update_weights_from_disk",
                                        {"model_path": str(v7), "weight_version": "7"})
    assert status == 200
    await asyncio.to_thread(call, engines[0].url, "/continue_generation", {})
    result = await task
    assert result.resumes == 1 and len(result.output_ids) == 400 == len(result.logprobs) == len(result.versions)
    assert result.versions[0] == "0" and result.versions[-1] == "7"
    switch = result.versions.index("7")
    assert 0 < switch and set(result.versions[:switch]) == {"0"} and set(result.versions[switch:]) == {"7"}
    assert result.finish_reason["type"] == "length"
    await client.close()
    await registry.redis.aclose()


async def test_a_request_a_pause_aborted_before_it_ran_is_resumed_from_nothing(models_root, tmp_path,
                                                                                redis_server):
    """SGLang answers a request that a pause aborted in its waiting queue with no tokens at all: the
    client sends it again, the engine holds it until continue, and it runs whole on the new weights."""
    job = f"j{uuid.uuid4().hex[:8]}"
    engine = _engine(models_root, tmp_path, redis_server, job, "engine-q", "--max-batch-size", "1")
    engine.wait_ready()
    client, registry = await _client(redis_server, job)
    try:
        v8 = _perturbed_checkpoint(models_root, "v8", 0.3)
        params = {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True}
        first = asyncio.create_task(client.generate(_ids(8), [], {**params, "max_new_tokens": 2000}))
        deadline = time.monotonic() + 30
        while call(engine.url, "/model_info")[1]["running"] == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        second = asyncio.create_task(client.generate(_ids(9), [], params))
        while call(engine.url, "/model_info")[1]["queued"] == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert (await asyncio.to_thread(call, engine.url, "/pause_generation", {"mode": "abort"}))[1]["aborted"] == 2
        status, _ = await asyncio.to_thread(call, engine.url, "/update_weights_from_disk",
                                            {"model_path": str(v8), "weight_version": "8"})
        assert status == 200
        await asyncio.to_thread(call, engine.url, "/continue_generation", {})
        a, b = await first, await second
        assert b.resumes == 1 and len(b.output_ids) == 40 == len(b.logprobs) and set(b.versions) == {"8"}
        assert a.resumes == 1 and len(a.output_ids) == 2000 and a.versions[0] == "0" and a.versions[-1] == "8"
    finally:
        await client.close()
        await registry.redis.aclose()
        engine.stop()


async def test_an_expansion_unlike_ours_is_refused_loudly(pair, redis_server, models_root):
    job, _ = pair
    client, registry = await _client(redis_server, job)
    policy = load_policy(models_root / "qwen2_5_vl", device="cpu", dtype="float32")
    batch = process_images(policy.image_processor, [decode_image(png(5))])
    expanded = prompt_ids(policy.tokenizer, prompt("Mismatch", 1), policy.image_token_id, batch.token_counts)
    lone = collapse_image_tokens(expanded, policy.image_token_id)
    ok = await client.generate(lone, [data_uri(png(5))], {"max_new_tokens": 2}, expanded_ids=expanded)
    assert len(ok.output_ids) == 2 and ok.versions == ["0", "0"]
    # Our side thinks the image has one merged patch fewer: the engine's expansion differs.
    short = expanded[:]
    short.remove(policy.image_token_id)
    with pytest.raises(BadGeneration) as refused:
        await client.generate(lone, [data_uri(png(5))], {"max_new_tokens": 2}, expanded_ids=short)
    assert refused.value.reason == "prompt_expansion"
    await client.close()
    await registry.redis.aclose()


def test_token_versions_come_from_sglangs_spans():
    spans = [{"version": "3", "start": 0, "end": 2}, {"version": "4", "start": 2, "end": 5}]
    assert token_versions({"weight_versions": spans}, 5) == ["3", "3", "4", "4", "4"]
    assert token_versions({"weight_versions": [{"version": "3", "start": 0, "end": 0}]}, 0) == []
    for meta, n in [({}, 1), ({"weight_version": "3"}, 2), ({"weight_versions": spans}, 6),
                    ({"weight_versions": spans[1:]}, 3), ({"weight_versions": [spans[1], spans[0]]}, 5),
                    ({"weight_versions": [{"version": 3, "start": 0, "end": 1}]}, 1)]:
        with pytest.raises(BadGeneration):
            token_versions(meta, n)


async def test_generations_in_flight_are_not_capped_by_the_http_client():
    """A gateway runs hundreds of episodes: all their generations reach the endpoint at once. A FAKE SGLang
    endpoint (loopback aiohttp) holds every request until 150 are in flight, then answers them all."""
    from aiohttp import web

    from tests.engine.test_sglang_source import OneEndpoint
    from tests.helpers import fake_http_server

    n, arrived, everyone = 150, [], asyncio.Event()

    async def generate(request: web.Request) -> web.Response:
        arrived.append(await request.json())
        if len(arrived) == n:
            everyone.set()
        await everyone.wait()
        return web.json_response({"text": "", "output_ids": [7], "meta_info": {
            "finish_reason": {"type": "stop"}, "output_token_logprobs": [[-0.5, 7, None]],
            "weight_versions": [{"version": "0", "start": 0, "end": 1}]}})

    async with fake_http_server([("POST", "/generate", generate)]) as url:
        client = InferenceClient(OneEndpoint(url), timeout_s=30, refresh_s=0)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(client.generate([1, 2, 3], [], {"max_new_tokens": 4}) for _ in range(n))), 20)
        finally:
            await client.close()
    assert len(arrived) == n and all(r.output_ids == [7] and r.versions == ["0"] for r in results)
