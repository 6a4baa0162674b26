"""The judge: strict parsing, rubric files, and the plumbing to real and fake endpoints."""

from __future__ import annotations

import hashlib
import json

import pytest
from aiohttp import web

from asyncwebrl.common.inference import Generation
from asyncwebrl.rollout.errors import JudgeError
from asyncwebrl.v1 import buffer_pb2, env_pb2
from asyncwebrl.rollout.judge import Judge, Rubric, judge_prompt, load_rubrics, parse_verdict
from tests.engine.conftest import engine, models_root, png  # noqa: F401 - fixtures
from tests.helpers import fake_http_server

RUBRIC = Rubric(("The agent opened the order page.", "The answer gives the order number 4412."), "4412")


def test_strict_parsing():
    ok = parse_verdict("FACT 1: PASS\nFACT 2: PASS\nVERDICT: PASS\n", 2)
    assert ok.passed and ok.facts == (True, True)
    fail = parse_verdict("  FACT 1: PASS\n\nFACT 2 : FAIL\nVERDICT:FAIL", 2)
    assert not fail.passed and fail.facts == (True, False)
    for text, why in (
        ("", "expected 3 lines"),
        ("FACT 1: PASS\nVERDICT: PASS", "expected 3 lines"),
        ("FACT 2: PASS\nFACT 1: PASS\nVERDICT: PASS", "line 1"),
        ("FACT 1: YES\nFACT 2: PASS\nVERDICT: PASS", "line 1"),
        ("FACT 1: PASS\nFACT 2: PASS\nThe verdict is pass", "last line"),
        ("FACT 1: PASS\nFACT 2: FAIL\nVERDICT: PASS", "contradicts"),
        ("Sure! FACT 1: PASS\nFACT 2: PASS\nVERDICT: PASS", "line 1"),
    ):
        with pytest.raises(JudgeError, match=why) as info:
            parse_verdict(text, 2)
        assert info.value.text == text[:8192], "the reply is kept"


def test_prompt_lists_every_fact_and_the_format():
    text = judge_prompt("Find the order number", RUBRIC, "4412", 2)
    assert "1. The agent opened the order page." in text and "Reference answer: 4412" in text
    assert "FACT 2: PASS or FAIL" in text and text.rstrip().endswith("(PASS only if every fact passes)")


def test_rubric_files(tmp_path):
    good = tmp_path / "rubrics.jsonl"
    good.write_text("\n".join(json.dumps(o) for o in (
        {"task": "webgym-lite/mail/find-order", "evaluator_reference": ["a", {"description": "b"}],
         "reference_answer": "4412"},
        {"task": "miniwob/click-test", "evaluator_reference": [{"fact": "clicked"}]},
    )))
    rubrics = load_rubrics(good)
    assert rubrics["webgym-lite/mail/find-order"] == Rubric(("a", "b"), "4412")
    assert rubrics["miniwob/click-test"].facts == ("clicked",)
    for line in ('{"task": "x", "evaluator_reference": []}', '{"evaluator_reference": ["a"]}', "not json",
                 '{"task": "x", "evaluator_reference": [{"nope": 1}]}'):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line)
        with pytest.raises(ValueError, match="bad.jsonl:1"):
            load_rubrics(bad)


async def test_the_embedded_engine_as_judge(engine):
    """A random model's verdict means nothing; the request and the parsing are what is tested."""
    judge = Judge(engine.url, "sglang", api_key="engine-key", max_tokens=24)
    try:
        with pytest.raises(JudgeError) as info:
            await judge.judge("Find the order number", RUBRIC, "4412", [("image/png", png(1)), ("image/png", png(2))])
        assert info.value.text, "the judge's (unparseable) reply is kept for the trajectory"
    finally:
        await judge.close()
    wrong_key = Judge(engine.url, "sglang", api_key="wrong")
    with pytest.raises(JudgeError, match="401"):
        await wrong_key.judge("t", RUBRIC, "a", [])
    await wrong_key.close()


async def test_openai_compatible_judge_against_a_fake_endpoint():
    """A FAKE OpenAI-compatible server (no such endpoint can run here): it checks the request
    shape and answers like a chat completion."""
    seen = {}

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        seen.update(body)
        return web.json_response({"choices": [{"message": {"role": "assistant",
                                                           "content": "FACT 1: PASS\nFACT 2: PASS\nVERDICT: PASS"}}]})

    async with fake_http_server([("POST", "/v1/chat/completions", completions)]) as url:
        judge = Judge(url, "openai", model="judge-vl")
        try:
            verdict = await judge.judge("Find the order", RUBRIC, "4412", [("image/png", png(3))])
            assert verdict.passed and verdict.facts == (True, True)
            content = seen["messages"][0]["content"]
            assert seen["model"] == "judge-vl" and seen["temperature"] == 0
            assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith(
                "data:image/png;base64,")
            assert content[-1]["type"] == "text" and "4412" in content[-1]["text"]
        finally:
            await judge.close()


class FakeJudge:
    """A FAKE OpenAI-compatible judge (no real judge model can run here): it checks the agent's answer
    against the rubric's reference answer in the prompt, records the most calls it had at once, and can
    answer garbage, stall past the client's timeout, or fail with a status for the first ``fail`` calls."""

    def __init__(self, mode: str = "ok", fail: int = 0, status: int = 503, delay: float = 0.0,
                 garbage: int = 0) -> None:
        self.mode, self.fail, self.status, self.delay, self.garbage = mode, fail, status, delay, garbage
        self.calls = self.running = self.most = 0

    async def completions(self, request: web.Request) -> web.Response:
        import asyncio

        body = await request.json()
        self.calls += 1
        n = self.calls  # this call's number (others arrive while it waits)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.mode == "stall":
                await asyncio.sleep(2)  # past the client timeout of the test
            await asyncio.sleep(self.delay)
            if n <= self.fail:
                return web.Response(status=self.status, text="overloaded")
            prompt = body["messages"][0]["content"][-1]["text"]
            if self.mode == "garbage" or n <= self.garbage:
                content = "I think the agent did fine!"
            else:
                reference = prompt.split("Reference answer: ", 1)[1].split("\n", 1)[0]
                ok = f"Agent's answer: {reference}\n" in prompt
                content = f"FACT 1: PASS\nFACT 2: {'PASS' if ok else 'FAIL'}\nVERDICT: {'PASS' if ok else 'FAIL'}"
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})
        finally:
            self.running -= 1

    def serve(self):
        return fake_http_server([("POST", "/v1/chat/completions", self.completions)])


def _sample(name: str, labels: dict | None = None) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_a_verdict_keeps_its_latency_and_checks_the_answer_against_the_rubric():
    fake = FakeJudge(delay=0.05)
    async with fake.serve() as url:
        judge = Judge(url, "openai", model="judge-vl")
        try:
            good = await judge.judge("Find the order", RUBRIC, "4412", [("image/png", png(1))])
            bad = await judge.judge("Find the order", RUBRIC, "4413", [])
        finally:
            await judge.close()
    assert good.passed and not bad.passed and good.text.endswith("VERDICT: PASS")
    assert 0.05 <= good.latency_s < 5 and bad.latency_s >= 0.05


async def test_garbage_is_unparseable_and_not_retried():
    fake = FakeJudge(mode="garbage")
    before = _sample("asyncwebrl_rollout_judge_calls_total", {"result": "unparseable"})
    async with fake.serve() as url:
        judge = Judge(url, "openai", retries=3, backoff_s=0.01)
        try:
            with pytest.raises(JudgeError) as info:
                await judge.judge("Find the order", RUBRIC, "4412", [])
        finally:
            await judge.close()
    assert info.value.reason == "judge_unparseable" and info.value.text == "I think the agent did fine!"
    assert fake.calls == 1
    assert _sample("asyncwebrl_rollout_judge_calls_total", {"result": "unparseable"}) == before + 1


async def test_an_overloaded_judge_is_retried_with_backoff_until_it_answers():
    fake = FakeJudge(fail=2, status=503)
    retries = _sample("asyncwebrl_rollout_judge_retries_total")
    five = _sample("asyncwebrl_rollout_judge_calls_total", {"result": "http_5xx"})
    async with fake.serve() as url:
        judge = Judge(url, "openai", retries=3, backoff_s=0.1, backoff_cap_s=0.2)
        try:
            verdict = await judge.judge("Find the order", RUBRIC, "4412", [])
        finally:
            await judge.close()
    assert verdict.passed and fake.calls == 3
    assert verdict.latency_s >= 0.05 + 0.1, "the backoff (jittered to half at least) is part of the latency"
    assert _sample("asyncwebrl_rollout_judge_retries_total") == retries + 2
    assert _sample("asyncwebrl_rollout_judge_calls_total", {"result": "http_5xx"}) == five + 2


async def test_a_judge_that_stays_down_makes_the_episode_unavailable_not_failed():
    """Timeouts, then a refused connection: retried up to --judge-retries, then judge_unavailable."""
    fake = FakeJudge(mode="stall")
    timeouts = _sample("asyncwebrl_rollout_judge_calls_total", {"result": "timeout"})
    retries = _sample("asyncwebrl_rollout_judge_retries_total")
    async with fake.serve() as url:
        judge = Judge(url, "openai", timeout_s=0.3, retries=2, backoff_s=0.01)
        try:
            with pytest.raises(JudgeError) as info:
                await judge.judge("Find the order", RUBRIC, "4412", [])
        finally:
            await judge.close()
    assert info.value.reason == "judge_unavailable" and fake.calls == 3
    assert _sample("asyncwebrl_rollout_judge_calls_total", {"result": "timeout"}) == timeouts + 3
    assert _sample("asyncwebrl_rollout_judge_retries_total") == retries + 2
    assert _sample("asyncwebrl_rollout_judge_in_flight") == 0
    # Nobody listening: refused, retried, unavailable.
    gone = Judge(url, "openai", retries=1, backoff_s=0.01)
    refused = _sample("asyncwebrl_rollout_judge_calls_total", {"result": "refused"})
    with pytest.raises(JudgeError) as info:
        await gone.judge("t", RUBRIC, "a", [])
    await gone.close()
    assert info.value.reason == "judge_unavailable"
    assert _sample("asyncwebrl_rollout_judge_calls_total", {"result": "refused"}) == refused + 2


async def test_a_client_error_is_not_retried():
    fake = FakeJudge(fail=5, status=401)
    async with fake.serve() as url:
        judge = Judge(url, "openai", retries=3, backoff_s=0.01)
        try:
            with pytest.raises(JudgeError, match="401") as info:
                await judge.judge("t", RUBRIC, "a", [])
        finally:
            await judge.close()
    assert info.value.reason == "judge_unavailable" and fake.calls == 1


async def test_concurrency_is_honoured():
    import asyncio

    fake = FakeJudge(delay=0.2)
    async with fake.serve() as url:
        judge = Judge(url, "openai", concurrency=2)
        try:
            verdicts = await asyncio.gather(*(judge.judge("t", RUBRIC, "4412", []) for _ in range(6)))
        finally:
            await judge.close()
    assert all(v.passed for v in verdicts) and fake.calls == 6
    assert fake.most == 2, f"the fake saw {fake.most} calls at once"
    assert all(v.latency_s < 0.2 * 6 for v in verdicts), "the wait for a slot is not the judge's latency"


class _FakeEnv:
    """A FAKE envfleet stub in-process: the miniwob-only test stack has no task the policy ends with an
    answer, which is what gets judged. One step, then done."""

    def __init__(self) -> None:
        self.n = 0

    def _obs(self) -> env_pb2.Observation:
        shot = env_pb2.ScreenshotRef(sha256=hashlib.sha256(SHOT).hexdigest(), width=56, height=56, mime="image/png",
                                     size_bytes=len(SHOT))
        return env_pb2.Observation(instruction="Find the order number", title="Orders", screenshot=shot)

    async def Allocate(self, request, timeout=None):
        self.n += 1
        return env_pb2.AllocateResponse(session_id=f"s{self.n}", observation=self._obs())

    async def Step(self, request, timeout=None):
        return env_pb2.StepResponse(observation=self._obs(), done=True, info=env_pb2.StepInfo(page_changed=True))

    async def Release(self, request, timeout=None):
        return env_pb2.ReleaseResponse()


class _FakeBlobs:
    async def get_many(self, job_id, shas):
        return [SHOT for _ in shas]


class _FakeBuffer:
    def __init__(self) -> None:
        self.groups: list[buffer_pb2.Group] = []

    async def PutGroup(self, request, timeout=None):
        self.groups.append(request.group)
        return buffer_pb2.PutGroupResponse()


class _AnsweringClient:
    """Stands in for the inference endpoint: every episode answers "4412" (the rubric's reference)."""

    def __init__(self, tokenizer) -> None:
        text = '<tool_call>{"name": "computer_use", "arguments": {"action": "answer", "text": "4412"}}</tool_call>'
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    async def generate(self, ids, images, sampling, **kwargs):
        return Generation(list(self.ids), [-0.1] * len(self.ids), ["0"] * len(self.ids), "", {}, ["fake"])


SHOT = png(5)


async def _judged_group(fake: "FakeJudge", group_size: int = 3, **judge_kwargs):
    from asyncwebrl.common.models.tiny import SHIPPED
    from asyncwebrl.rollout.__main__ import load_policy_io
    from asyncwebrl.rollout.config import RolloutConfig
    from asyncwebrl.rollout.service import Gateway

    policy = load_policy_io(str(SHIPPED / "qwen2_5_vl"))
    buffer = _FakeBuffer()
    task = env_pb2.TaskInfo(name="webgym-lite/mail/find-order", source="webgym-lite", difficulty="easy")
    async with fake.serve() as url:
        judge = Judge(url, "openai", model="judge-vl", **judge_kwargs)
        config = RolloutConfig(job_id="judged", group_size=group_size, steps_easy=2, judge_url=url,
                               judge_kind="openai")
        gateway = Gateway(config, _FakeEnv(), buffer, _FakeBlobs(), _AnsweringClient(policy.tokenizer), policy,
                          judge, {task.name: RUBRIC})
        try:
            await gateway._group(task, 7)
        finally:
            await judge.close()
    return gateway, buffer


def _lost(reason: str) -> float:
    return _sample("asyncwebrl_rollout_episodes_lost_total", {"reason": reason})


async def test_a_judged_group_keeps_verdict_text_and_latency():
    gateway, buffer = await _judged_group(FakeJudge(delay=0.02))
    (group,) = buffer.groups
    assert len(group.episodes) == 3
    for e in group.episodes:
        assert e.judged and e.success and e.reward == 1.0 and e.finish_reason == "answer"
        assert e.judge_text.endswith("VERDICT: PASS") and 0.02 <= e.judge_latency_s < 10


async def test_an_unparseable_verdict_voids_its_episode_only():
    lost = _lost("judge_unparseable")
    gateway, buffer = await _judged_group(FakeJudge(garbage=1))
    (group,) = buffer.groups
    assert len(group.episodes) == 2 and all(e.judged and e.success for e in group.episodes)
    assert _lost("judge_unparseable") == lost + 1
    # Two of two unparseable in a group of three: one episode left, the group is dropped by that reason.
    gateway, buffer = await _judged_group(FakeJudge(garbage=2))
    assert not buffer.groups and gateway.dropped == {"judge_unparseable": 1}


async def test_a_judge_down_past_its_retries_voids_the_episode_as_unavailable():
    lost = _lost("judge_unavailable")
    timeouts = _sample("asyncwebrl_rollout_judge_calls_total", {"result": "timeout"})
    gateway, buffer = await _judged_group(FakeJudge(mode="stall"), group_size=2, timeout_s=0.3, retries=1,
                                          backoff_s=0.01)
    assert not buffer.groups and gateway.dropped == {"judge_unavailable": 1}
    assert _lost("judge_unavailable") == lost + 2, "voided, not failed with reward 0"
    assert _sample("asyncwebrl_rollout_judge_calls_total", {"result": "timeout"}) == timeouts + 4


def test_the_gateways_judge_flags_are_bounded():
    from asyncwebrl.common.config import parse_config
    from asyncwebrl.rollout.config import RolloutConfig

    ok = parse_config(RolloutConfig, ["--judge-url", "https://judge.example/v1", "--judge-concurrency", "256",
                                      "--judge-timeout-s", "1", "--judge-retries", "0"],
                      environ={"ASYNCWEBRL_JUDGE_API_KEY": "k"})
    assert (ok.judge_concurrency, ok.judge_timeout_s, ok.judge_retries, ok.judge_api_key) == (256, 1.0, 0, "k")
    for bad in (["--judge-url", "ftp://judge"], ["--judge-url", "https://j/" + "a" * 600],
                ["--judge-concurrency", "0"], ["--judge-concurrency", "257"], ["--judge-timeout-s", "0.5"],
                ["--judge-retries", "11"], ["--judge-backoff-s", "5", "--judge-backoff-cap-s", "1"]):
        with pytest.raises(SystemExit):
            parse_config(RolloutConfig, bad, environ={})
