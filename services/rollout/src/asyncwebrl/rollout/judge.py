"""Judge rewards for rubric tasks (WebGym format).

A vision-language model behind an OpenAI-compatible (``/v1/chat/completions``)
or SGLang (``/generate``) endpoint sees the task, its rubric facts, the
reference answer if any, the agent's answer and the final screenshots, and must
answer in exactly this form::

    FACT 1: PASS
    FACT 2: FAIL
    VERDICT: FAIL

The reply is parsed strictly: one line per fact in order, then a verdict that
agrees with the facts (PASS only if every fact passes). A reply that does not
parse is not a reward: the episode is void (``JudgeError``), like an
environment fault, and never trained on with a made-up reward.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import re

import aiohttp

from asyncwebrl.rollout.errors import MAX_JUDGE_TEXT, JudgeError

MAX_FACTS = 32
_FACT = re.compile(r"^FACT\s+(\d+)\s*:\s*(PASS|FAIL)$")
_VERDICT = re.compile(r"^VERDICT\s*:\s*(PASS|FAIL)$")


@dataclasses.dataclass(frozen=True)
class Rubric:
    facts: tuple[str, ...]
    reference_answer: str = ""


@dataclasses.dataclass(frozen=True)
class Verdict:
    passed: bool
    facts: tuple[bool, ...]
    text: str


def load_rubrics(path: str | pathlib.Path) -> dict[str, Rubric]:
    """JSONL, one task per line: {"task": <envfleet task name>, "evaluator_reference": [facts],
    "reference_answer": optional}. Facts are strings or objects with description/fact/text."""
    out: dict[str, Rubric] = {}
    for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            task = obj["task"]
            raw = obj["evaluator_reference"]
            facts = tuple(f if isinstance(f, str) else (f.get("description") or f.get("fact") or f.get("text"))
                          for f in raw)
            if not isinstance(task, str) or not task or not 0 < len(facts) <= MAX_FACTS:
                raise ValueError("task and 1-32 facts are required")
            if not all(isinstance(f, str) and 0 < len(f) <= 1000 for f in facts):
                raise ValueError("every fact must be text of 1-1000 characters")
            reference = obj.get("reference_answer") or ""
            if not isinstance(reference, str):
                raise ValueError("reference_answer must be text")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"rubrics: {path}:{n}: {exc}") from exc
        out[task] = Rubric(facts, reference[:1000])
    return out


def judge_prompt(instruction: str, rubric: Rubric, answer: str, n_images: int) -> str:
    facts = "\n".join(f"{i}. {fact}" for i, fact in enumerate(rubric.facts, start=1))
    reference = f"\nReference answer: {rubric.reference_answer}" if rubric.reference_answer else ""
    return (
        "You judge whether a web agent completed a task. Use the screenshots of its last pages and its answer.\n"
        f"Task: {instruction}\nFacts that must all hold:\n{facts}{reference}\n"
        f"Agent's answer: {answer}\n"
        f"Reply with exactly {len(rubric.facts) + 1} lines and nothing else:\n"
        + "".join(f"FACT {i}: PASS or FAIL\n" for i in range(1, len(rubric.facts) + 1))
        + "VERDICT: PASS or FAIL (PASS only if every fact passes)"
    )


def parse_verdict(text: str, n_facts: int) -> Verdict:
    """Strict: raises JudgeError on anything but the required lines."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) != n_facts + 1:
        raise JudgeError(f"expected {n_facts + 1} lines, got {len(lines)}", text)
    facts = []
    for i, line in enumerate(lines[:-1], start=1):
        m = _FACT.match(line)
        if not m or int(m.group(1)) != i:
            raise JudgeError(f"line {i} is not 'FACT {i}: PASS|FAIL'", text)
        facts.append(m.group(2) == "PASS")
    m = _VERDICT.match(lines[-1])
    if not m:
        raise JudgeError("the last line is not 'VERDICT: PASS|FAIL'", text)
    passed = m.group(1) == "PASS"
    if passed != all(facts):
        raise JudgeError("the verdict contradicts the facts", text)
    return Verdict(passed, tuple(facts), text[:MAX_JUDGE_TEXT])


class Judge:
    def __init__(self, url: str, kind: str = "sglang", api_key: str = "", model: str = "",
                 timeout_s: float = 120.0, max_tokens: int = 256) -> None:
        if kind not in ("sglang", "openai"):
            raise ValueError("judge_kind: must be sglang or openai")
        self.url = url.rstrip("/")
        self.kind = kind
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_tokens = max_tokens
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def judge(self, instruction: str, rubric: Rubric, answer: str,
                    screenshots: list[tuple[str, bytes]]) -> Verdict:
        uris = [f"data:{mime};base64,{base64.b64encode(data).decode()}" for mime, data in screenshots]
        prompt = judge_prompt(instruction, rubric, answer, len(uris))
        text = await (self._sglang(prompt, uris) if self.kind == "sglang" else self._openai(prompt, uris))
        return parse_verdict(text, len(rubric.facts))

    async def _post(self, path: str, body: dict) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url + path, json=body, headers=self.headers) as resp:
                if resp.status != 200:
                    raise JudgeError(f"judge endpoint answered {resp.status}: {(await resp.text())[:200]}")
                return await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JudgeError(f"judge endpoint unreachable: {type(exc).__name__}") from exc

    async def _sglang(self, prompt: str, uris: list[str]) -> str:
        images = "<|vision_start|><|image_pad|><|vision_end|>" * len(uris)
        text = f"<|im_start|>user\n{images}{prompt}<|im_end|>\n<|im_start|>assistant\n"
        out = await self._post("/generate", {
            "text": text, "image_data": uris,
            "sampling_params": {"temperature": 0, "max_new_tokens": self.max_tokens},
        })
        reply = out.get("text")
        if not isinstance(reply, str):
            raise JudgeError("the judge's reply has no text")
        return reply

    async def _openai(self, prompt: str, uris: list[str]) -> str:
        content = [{"type": "image_url", "image_url": {"url": u}} for u in uris] + [{"type": "text", "text": prompt}]
        out = await self._post("/v1/chat/completions", {
            "model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": content}],
        })
        try:
            reply = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError("the judge's reply is not a chat completion") from exc
        if not isinstance(reply, str):
            raise JudgeError("the judge's reply has no text")
        return reply
