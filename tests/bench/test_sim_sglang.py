"""bench/sim_sglang.py (the FAKE SGLang of the scale simulator) against our real client code.

One real subprocess with two endpoints on loopback; requests built with the gateway's own
functions and sent through InferenceClient, as the rollout gateway sends them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pathlib
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from PIL import Image

from asyncwebrl.common.agent.actions import parse_action
from asyncwebrl.common.agent.prompt import collapse_image_tokens, prompt_ids, render
from asyncwebrl.common.inference import InferenceClient
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.rollout.__main__ import load_policy_io
from asyncwebrl.v1 import env_pb2
from tests.engine.test_sglang_source import OneEndpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = "sim-test-key"
ITL_S, TTFT_S = 0.002, 0.01
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    port_file = tmp_path_factory.mktemp("sim") / "ports.json"
    # Long outputs (~400 tokens at 2 ms: ~1 s) so a pause lands mid-request.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "sim_sglang.py"), "--count", "2", "--port-file", str(port_file),
         "--time-scale", "1", "--itl-s", str(ITL_S), "--ttft-base-s", str(TTFT_S), "--prefill-s-per-1k-tokens", "0",
         "--output-tokens-median", "400", "--output-tokens-p90", "500", "--load-s", "0.2", "--api-key", KEY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the fake did not write its port file"
        time.sleep(0.1)
    proc.urls = [e["url"] for e in json.loads(port_file.read_text())]
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def policy():
    return load_policy_io(str(SHIPPED / "qwen2_5_vl"))


def _jpeg(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _step_prompt(policy, width=320, height=200) -> list[int]:
    """The expanded ids the gateway trains on, built as rollout.episode builds them."""
    shot = env_pb2.ScreenshotRef(width=width, height=height, mime="image/jpeg")
    return prompt_ids(policy.tokenizer, render("Open the pricing page", [], 1), policy.image_token_id,
                      [policy.image_tokens(shot)])


async def _post(session, url, body, headers=AUTH):
    async with session.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_gateway_prompt_is_expanded_as_expected_and_output_parses(sim, policy):
    ids = _step_prompt(policy)
    client = InferenceClient(OneEndpoint(sim.urls[0]), api_key=KEY, refresh_s=0, wait_for_endpoint_s=5)
    try:
        # InferenceClient raises BadGeneration unless prompt_token_ids equal ``ids``.
        gen = await client.generate(collapse_image_tokens(ids, policy.image_token_id), [_jpeg(320, 200)],
                                    {"max_new_tokens": 1024, "temperature": 1.0}, expanded_ids=ids,
                                    image_token_id=policy.image_token_id)
    finally:
        await client.close()
    assert ids.count(policy.image_token_id) > 1
    action = parse_action(policy.decode(gen.output_ids))
    assert action.valid and action.action == "click", action
    assert gen.finish_reason["type"] == "stop" and set(gen.versions) == {"0"}
    assert len(gen.logprobs) == len(gen.output_ids) and all(lp <= 0 for lp in gen.logprobs)


async def test_decode_takes_at_least_the_stated_time(sim, policy):
    body = {"input_ids": collapse_image_tokens(_step_prompt(policy), policy.image_token_id),
            "image_data": [_jpeg(320, 200)], "sampling_params": {"max_new_tokens": 300}}
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, out = await _post(s, sim.urls[0] + "/generate", body)
        took = time.monotonic() - started
    assert status == 200, out
    n, finish = out["meta_info"]["completion_tokens"], out["meta_info"]["finish_reason"]
    assert finish == {"type": "length", "length": 300} if n == 300 else finish["type"] == "stop", out["meta_info"]
    # Lower bound only: one request running, so each token takes itl * (1 + 1/64).
    assert took >= TTFT_S + n * ITL_S * (1 + 1 / 64), (took, n)


async def test_bad_requests_get_400_naming_the_field(sim, policy):
    ids = collapse_image_tokens(_step_prompt(policy), policy.image_token_id)
    url = sim.urls[1] + "/generate"
    async with aiohttp.ClientSession() as s:
        status, out = await _post(s, url, {"input_ids": ids, "image_data": [_jpeg(320, 200)] * 2})
        assert status == 400 and out["message"].startswith("image_data:"), out
        status, out = await _post(s, url, {"image_data": [_jpeg(320, 200)], "sampling_params": {}})
        assert status == 400 and "input_ids" in out["message"], out
        status, out = await _post(s, url, {"input_ids": ids, "image_data": [_jpeg(320, 200)],
                                           "sampling_params": {"max_new_tokens": "many"}})
        assert status == 400 and out["message"].startswith("sampling_params.max_new_tokens:"), out
        status, out = await _post(s, url, {"input_ids": ids, "image_data": ["not an image"]})
        assert status == 400 and out["message"].startswith("image_data[0]:"), out
        status, out = await _post(s, url, {"text": "hi"}, headers={})
        assert status == 401, out


async def test_pause_aborts_update_sets_version_continue_resumes(sim, policy, tmp_path):
    url = sim.urls[1]
    text = "<|im_start|>user\nGo on<|im_end|>\n<|im_start|>assistant\n"
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    client = InferenceClient(OneEndpoint(url), api_key=KEY, refresh_s=0, wait_for_endpoint_s=5)
    async with aiohttp.ClientSession() as s:
        raw = asyncio.create_task(_post(s, url + "/generate", {
            "input_ids": ids, "sampling_params": {"max_new_tokens": 1024}, "return_logprob": True}))
        resumed = asyncio.create_task(client.generate(ids, [], {"max_new_tokens": 1024}))
        # Both decoding (not merely sent: a loaded machine may take a while to deliver them), then pause.
        deadline = time.monotonic() + 20
        while True:
            async with s.get(url + "/sim_stats") as resp:
                if (await resp.json())["running"] == 2:
                    break
            assert time.monotonic() < deadline, "the two requests never decoded together"
            await asyncio.sleep(0.02)
        assert (await _post(s, url + "/pause_generation", {}, headers={}))[0] == 401
        status, out = await _post(s, url + "/pause_generation", {})
        assert status == 200 and out["aborted"] == 2, out
        status, out = await raw
        meta = out["meta_info"]
        assert status == 200 and meta["finish_reason"]["type"] == "abort", out
        assert 0 < len(out["output_ids"]) == len(meta["output_token_logprobs"]) < 1024
        assert meta["weight_versions"] == [{"version": "0", "start": 0, "end": len(out["output_ids"])}]

        waiting = asyncio.create_task(_post(s, url + "/generate", {"input_ids": ids}))
        await asyncio.sleep(0.3)
        assert not waiting.done() and not resumed.done()  # paused: new requests wait
        body = {"model_path": str(tmp_path), "weight_version": "3"}
        assert (await _post(s, url + "/update_weights_from_disk", body, headers={}))[0] == 401
        status, out = await _post(s, url + "/update_weights_from_disk", body)
        assert status == 200 and out["success"] is True, out
        status, out = await _post(s, url + "/update_weights_from_disk", {**body, "weight_version": True})
        assert status == 400 and out["message"].startswith("weight_version:"), out
        async with s.get(url + "/model_info", headers=AUTH) as resp:
            assert (await resp.json())["weight_version"] == "3"
        assert (await _post(s, url + "/continue_generation", {}))[0] == 200

        status, out = await waiting
        n = len(out["output_ids"])
        assert status == 200 and out["meta_info"]["weight_versions"] == [{"version": "3", "start": 0, "end": n}]
    gen = await resumed
    await client.close()
    # The resumed request went on where it stopped: one tool call, tokens from both versions.
    assert gen.resumes >= 1 and gen.versions[0] == "0" and gen.versions[-1] == "3"
    assert parse_action(policy.decode(gen.output_ids)).valid


async def test_sim_stats_count_requests(sim):
    async with aiohttp.ClientSession() as s:
        stats = []
        for url in sim.urls:
            async with s.get(url + "/sim_stats") as resp:
                assert resp.status == 200
                stats.append(await resp.json())
            async with s.get(url + "/nowhere", headers=AUTH) as resp:  # without the key: 401, as the engine
                assert resp.status == 404
    assert [st["requests"] for st in stats] == [2, 4]  # 400s never reach the scheduler; a resume is a request
    assert stats[1]["aborted"] == 2 and stats[1]["version"] == "3" and stats[0]["version"] == "0"
    assert stats[0]["output_tokens"] >= 300 and stats[0]["busy_s"] >= 300 * ITL_S
    assert all(st["running"] == st["queued"] == 0 for st in stats)


def test_sigterm_exits_0(sim):
    sim.send_signal(signal.SIGTERM)
    assert sim.wait(timeout=15) == 0
