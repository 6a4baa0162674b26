"""SGLang's own code, not our reading of it, expands the /generate requests our gateway sends.

The gateway (``InferenceClient.generate``, called the way ``rollout.episode`` calls it, and the
rollout ``Judge``) talks to a stand-in endpoint that records its request bodies and answers in
SGLang's shape. Those exact bodies then go through SGLang's ``/generate`` tokenization, in the
deployed release (deploy/sglang/Dockerfile) and the newest one checked (tests/engine/sglang_side.py
says what runs and what is stubbed): ``GenerateReqInput`` built as FastAPI builds it,
``TokenizerManager._tokenize_one_request`` with ``QwenVLImageProcessor`` on the tiny checkpoints,
whose ``input_ids`` SGLang answers as ``prompt_token_ids``.

* One pad per image (what the gateway sends) expands to exactly our ``prompt_ids``: the ids the
  trainer trains on and the gateway checks ``prompt_token_ids`` against.
* A resume (that prompt + the partial output) expands to our prompt + the same output ids.
* A pre-expanded run of pads (what the gateway used to send) is refused: for Qwen2.5-VL by the
  Hugging Face processor's pad count (ValueError: HTTP 400), for Qwen3-VL inside
  ``build_input_ids`` (IndexError with one image, AssertionError with two: HTTP 500).

The first run downloads the SGLang wheels and a few small packages from PyPI (without PyPI it fails)
and runs SGLang (about 15 s of CPU per release); later runs with the same requests, checkpoints and
packages reuse SGLang's answers (ASYNCWEBRL_SGLANG_SIDE_FRESH=1: run it again).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses

import pytest
from aiohttp import web

from asyncwebrl.common.agent.prompt import HistoryStep, collapse_image_tokens, prompt_ids, render
from asyncwebrl.common.agent.vision import load_processors
from asyncwebrl.common.inference import InferenceClient
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.registry import Endpoint
from asyncwebrl.rollout.episode import Policy
from asyncwebrl.rollout.judge import Judge, Rubric
from asyncwebrl.v1 import env_pb2
from tests.engine import sglang_side
from tests.engine.conftest import data_uri, png

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
VERSIONS = sorted({sglang_side.deployed_version(), sglang_side.LATEST})
PAD, START, END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
SHOTS = ((31, 240, 320), (32, 210, 160))  # seed, height, width: two sizes, two pad counts
SAMPLING = {"max_new_tokens": 12, "temperature": 1.0}
OUTPUT = '<tool_call>{"name": "computer_use", "arguments": {"action": "left_click"'
PARTIAL = 5  # output tokens before the simulated weight update cuts the two-image request off
# The fields the gateway's /generate bodies carry (InferenceClient.generate).
GATEWAY_FIELDS = {"input_ids", "image_data", "sampling_params", "return_logprob", "return_prompt_token_ids", "rid"}
BP = "sglang/srt/multimodal/processors/base_processor.py:BaseMultimodalProcessor."
QWEN = "sglang/srt/multimodal/processors/qwen_vl.py:QwenVLImageProcessor."
TM = "sglang/srt/managers/tokenizer_manager.py:TokenizerManager."


@dataclasses.dataclass
class Captured:
    """One family's gateway requests, and the ids our side expects SGLang to expand each to."""

    requests: dict[str, dict]
    expected: dict[str, list[int]]


class OneEndpoint:
    """The registry, reduced to one live SGLang endpoint."""

    def __init__(self, url: str) -> None:
        self.endpoint = Endpoint(endpoint_id="sglang-0", url=url, ready=True, weight_version="3", heartbeat_ms=0,
                                 kind="sglang")

    async def live(self) -> list[Endpoint]:
        return [self.endpoint]


async def _capture(family: str) -> Captured:
    tokenizer, processor = load_processors(SHIPPED / family)
    pad = tokenizer.convert_tokens_to_ids(PAD)
    policy = Policy(tokenizer, processor, pad)
    shots = [png(seed, h, w) for seed, h, w in SHOTS]
    uris = [data_uri(s) for s in shots]  # as rollout.episode builds them for PNG screenshots
    counts = [policy.image_tokens(env_pb2.ScreenshotRef(height=h, width=w)) for _, h, w in SHOTS]
    assert counts[0] != counts[1]
    one = prompt_ids(tokenizer, render("Sign in as alice", [], 1), pad, counts[:1])
    two = prompt_ids(tokenizer, render("Sign in as alice", [HistoryStep("Sign in", "click(120, 40)", True)], 2),
                     pad, counts)
    output = tokenizer(OUTPUT, add_special_tokens=False)["input_ids"]
    assert pad not in output and len(output) > PARTIAL
    prompts = {tuple(collapse_image_tokens(ids, pad)): ids for ids in (one, two)}
    bodies: list[dict] = []

    async def generate(request: web.Request) -> web.Response:
        """SGLang's answer, given that it expands the prompt as we expect (checked below against SGLang)."""
        body = await request.json()
        bodies.append(body)
        if "text" in body:  # the judge
            return web.json_response({"text": "FACT 1: PASS\nVERDICT: PASS", "output_ids": [], "meta_info": {}})
        ids = body["input_ids"]
        key = next(k for k in prompts if tuple(ids[:len(k)]) == k)
        resumed = ids[len(key):]
        cut = len(body["image_data"]) == 2 and not resumed  # a weight update cuts it off once
        out = output[len(resumed):PARTIAL] if cut else output[len(resumed):][:body["sampling_params"]["max_new_tokens"]]
        finish = {"type": "abort", "message": "weight update"} if cut else {"type": "length", "length": len(out)}
        return web.json_response({
            "text": tokenizer.decode(out), "output_ids": out, "prompt_token_ids": prompts[key] + resumed,
            "meta_info": {"id": body["rid"], "finish_reason": finish, "prompt_tokens": len(prompts[key] + resumed),
                          "completion_tokens": len(out), "cached_tokens": 0, "weight_version": "3",
                          "weight_versions": [{"version": "3", "start": 0, "end": len(out)}],
                          "output_token_logprobs": [[-0.5, t, None] for t in out], "e2e_latency": 0.01},
        })

    app = web.Application()
    app.router.add_post("/generate", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    client = InferenceClient(OneEndpoint(url), refresh_s=0, wait_for_endpoint_s=5)
    judge = Judge(url, kind="sglang", max_tokens=32)
    try:
        # As rollout.episode calls it: one pad per image; the trainer's ids as the expected expansion.
        # (Fixed rids: the same requests each run, so sglang_side may reuse SGLang's answers.)
        first = await client.generate(collapse_image_tokens(one, pad), uris[:1], SAMPLING, rid="step-0",
                                      expanded_ids=one, image_token_id=pad)
        later = await client.generate(collapse_image_tokens(two, pad), uris, SAMPLING, rid="step-1",
                                      expanded_ids=two, image_token_id=pad)
        verdict = await judge.judge("Sign in as alice", Rubric(("alice is signed in",)), "done",
                                    [("image/png", shots[1])])
    finally:
        await client.close()
        await judge.close()
        await runner.cleanup()
    assert first.resumes == 0 and later.resumes == 1 and later.output_ids == output[:SAMPLING["max_new_tokens"]]
    assert verdict.passed and len(bodies) == 4
    b_one, b_two, b_resume, b_judge = bodies
    for b in (b_one, b_two, b_resume):
        assert set(b) == GATEWAY_FIELDS and b["return_prompt_token_ids"] is True
    start, end = tokenizer.convert_tokens_to_ids(START), tokenizer.convert_tokens_to_ids(END)
    for b, images in ((b_one, 1), (b_two, 2)):  # each pad alone between vision start and end
        pads = [i for i, t in enumerate(b["input_ids"]) if t == pad]
        assert len(pads) == images and all(b["input_ids"][i - 1:i + 2] == [start, pad, end] for i in pads)
    assert b_one["input_ids"] == collapse_image_tokens(one, pad)
    assert b_two["input_ids"] == collapse_image_tokens(two, pad)
    assert b_resume["input_ids"] == b_two["input_ids"] + output[:PARTIAL]
    assert b_judge["text"].count(START + PAD + END) == 1 and b_judge["image_data"] == uris[1:]
    return Captured(
        requests={
            "one_image": b_one, "two_images": b_two, "resume": b_resume, "judge": b_judge,
            # What the gateway sent before: the pads already expanded.
            "one_image_pre_expanded": {**b_one, "input_ids": one},
            "two_images_pre_expanded": {**b_two, "input_ids": two},
        },
        expected={
            "one_image": one, "two_images": two, "resume": two + output[:PARTIAL],
            "judge": prompt_ids(tokenizer, b_judge["text"], pad, counts[1:]),
        },
    )


@pytest.fixture(scope="module")
def captured() -> dict[str, Captured]:
    return {family: asyncio.run(_capture(family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def sglang(captured) -> dict[str, dict]:
    """SGLang's answers to the captured requests, per version (the versions run side by side)."""
    families = {f: {"model": str(SHIPPED / f), "requests": c.requests} for f, c in captured.items()}
    with concurrent.futures.ThreadPoolExecutor(len(VERSIONS)) as pool:
        runs = {v: pool.submit(sglang_side.run_generate, v, families) for v in VERSIONS}
        return {v: run.result() for v, run in runs.items()}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sglang_expands_one_pad_per_image_to_our_ids(version, family, captured, sglang):
    out = sglang[version]
    assert out["version"] == version and set(out["stubbed"]) <= set(sglang_side.STUBBED)
    fam = out["families"][family]
    # The processor SGLang's registry picks for the checkpoint's architecture.
    assert fam["processor"] == "sglang.srt.multimodal.processors.qwen_vl.QwenVLImageProcessor"
    assert fam["hf_processor"] == {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[family]
    for name, expected in captured[family].expected.items():
        got = fam["requests"][name]
        assert got["ok"], f"{name}: SGLang refused it: {got}"
        assert got["prompt_token_ids"] == expected, f"{name}: SGLang's expansion differs from ours"
        assert {TM + "_tokenize_one_request", QWEN + "process_mm_data_async"} <= set(got["ran"]), name
        if family == "qwen2_5_vl":
            # Decoded back to text for the Hugging Face processor, then the request's own ids expanded.
            assert {BP + "load_mm_data", BP + "process_and_combine_mm_data"} <= set(got["ran"]), name
            if name != "judge":
                assert BP + "_expand_input_ids" in got["ran"], name
        else:
            assert {QWEN + "compose_image_artifacts", BP + "build_input_ids"} <= set(got["ran"]), name


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sglang_refuses_pre_expanded_pads(version, family, sglang):
    requests = sglang[version]["families"][family]["requests"]
    for name, images in (("one_image_pre_expanded", 1), ("two_images_pre_expanded", 2)):
        got = requests[name]
        assert not got["ok"], f"{name}: SGLang accepted {len(got['prompt_token_ids'])} ids"
        if family == "qwen2_5_vl":
            # The Hugging Face processor counts every pad as an image: http_server answers 400.
            assert got["type"] == "ValueError", got
            assert got["raised_in"] == "transformers/processing_utils.py:ProcessorMixin.validate_inputs", got
            assert "should be the same as the number of images" in got["message"] and f"and {images} images" in \
                got["message"], got
            assert BP + "process_mm_data" in got["sglang_frames"], got
        else:
            # build_input_ids takes every pad for an image start: an uncaught error, HTTP 500.
            assert got["type"] == ("IndexError" if images == 1 else "AssertionError"), got
            assert got["raised_in"] == BP + "build_input_ids", got
