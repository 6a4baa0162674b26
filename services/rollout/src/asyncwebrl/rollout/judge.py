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

import asyncio
import base64
import dataclasses
import json
import pathlib
import random
import re
import time

import aiohttp

from asyncwebrl.rollout import metrics
from asyncwebrl.rollout.errors import MAX_JUDGE_TEXT, JudgeError, JudgeUnavailable

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
    latency_s: float = 0.0  # the judge's time for this verdict (Judge.judge)


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


class _Retryable(Exception):
    """A call that may succeed if made again: ``result`` is its judge_calls_total label."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


class Judge:
    """Calls a judge endpoint, at most ``concurrency`` at once. A call that times out, cannot connect or is
    answered 5xx or 429 is made again after an exponential backoff (``backoff_s`` doubling up to
    ``backoff_cap_s``, with jitter), up to ``retries`` times; then the episode is void as
    ``judge_unavailable`` (``JudgeUnavailable``), never a failure with reward 0. Any other error status is
    not retried (a wrong key stays wrong) and is as unavailable. A reply that is no verdict voids its
    episode as ``judge_unparseable``."""

    def __init__(self, url: str, kind: str = "sglang", api_key: str = "", model: str = "",
                 timeout_s: float = 120.0, max_tokens: int = 256, concurrency: int = 8, retries: int = 3,
                 backoff_s: float = 1.0, backoff_cap_s: float = 30.0) -> None:
        if kind not in ("sglang", "openai"):
            raise ValueError("judge_kind: must be sglang or openai")
        if concurrency < 1 or retries < 0:
            raise ValueError("judge: concurrency must be >= 1 and retries >= 0")
        self.url = url.rstrip("/")
        self.kind = kind
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_tokens = max_tokens
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def judge(self, instruction: str, rubric: Rubric, answer: str,
                    screenshots: list[tuple[str, bytes]]) -> Verdict:
        """The verdict, with ``latency_s``: from the first call to the verdict, retries and backoff
        included (not the wait for a free slot before the first call)."""
        uris = [f"data:{mime};base64,{base64.b64encode(data).decode()}" for mime, data in screenshots]
        prompt = judge_prompt(instruction, rubric, answer, len(uris))
        started: list[float] = []
        text = await self._ask(prompt, uris, started)
        try:
            verdict = parse_verdict(text, len(rubric.facts))
        except JudgeError:
            metrics.JUDGE_CALLS.labels("unparseable").inc()
            raise
        metrics.JUDGE_CALLS.labels("ok").inc()
        return dataclasses.replace(verdict, latency_s=time.monotonic() - started[0])

    async def _ask(self, prompt: str, uris: list[str], started: list[float]) -> str:
        last: _Retryable | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                metrics.JUDGE_RETRIES.inc()
                delay = min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            async with self._slots:
                if not started:
                    started.append(time.monotonic())
                metrics.JUDGE_IN_FLIGHT.inc()
                t = time.monotonic()
                try:
                    return await (self._sglang(prompt, uris) if self.kind == "sglang" else self._openai(prompt, uris))
                except _Retryable as exc:
                    metrics.JUDGE_CALLS.labels(exc.result).inc()
                    last = exc
                finally:
                    metrics.JUDGE_IN_FLIGHT.dec()
                    metrics.JUDGE_SECONDS.observe(time.monotonic() - t)
        raise JudgeUnavailable(f"judge unavailable after {self.retries + 1} calls: {last}")

    async def _post(self, path: str, body: dict) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url + path, json=body, headers=self.headers) as resp:
                if resp.status == 429 or resp.status >= 500:
                    raise _Retryable("http_429" if resp.status == 429 else "http_5xx",
                                     f"judge endpoint answered {resp.status}")
                if resp.status != 200:
                    metrics.JUDGE_CALLS.labels("http_error").inc()
                    raise JudgeUnavailable(f"judge endpoint answered {resp.status}: {(await resp.text())[:200]}")
                try:
                    return await resp.json(content_type=None)
                except ValueError as exc:
                    metrics.JUDGE_CALLS.labels("bad_reply").inc()
                    raise JudgeError("the judge's reply is not JSON") from exc
        except TimeoutError as exc:
            raise _Retryable("timeout", "judge endpoint timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise _Retryable("refused", f"judge endpoint unreachable: {type(exc).__name__}") from exc
        except aiohttp.ClientError as exc:
            raise _Retryable("connection_error", f"judge connection failed: {type(exc).__name__}") from exc

    def _reply_error(self, message: str) -> JudgeError:
        metrics.JUDGE_CALLS.labels("bad_reply").inc()
        return JudgeError(message)

    async def _sglang(self, prompt: str, uris: list[str]) -> str:
        images = "<|vision_start|><|image_pad|><|vision_end|>" * len(uris)
        text = f"<|im_start|>user\n{images}{prompt}<|im_end|>\n<|im_start|>assistant\n"
        out = await self._post("/generate", {
            "text": text, "image_data": uris,
            "sampling_params": {"temperature": 0, "max_new_tokens": self.max_tokens},
        })
        reply = out.get("text")
        if not isinstance(reply, str):
            raise self._reply_error("the judge's reply has no text")
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
            raise self._reply_error("the judge's reply is not a chat completion") from exc
        if not isinstance(reply, str):
            raise self._reply_error("the judge's reply has no text")
        return reply
