"""The judge: strict parsing, rubric files, and the plumbing to real and fake endpoints."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from asyncwebrl.rollout.errors import JudgeError
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
