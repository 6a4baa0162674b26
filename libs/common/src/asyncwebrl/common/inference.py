"""A client for a job's inference endpoints (SGLang pods or embedded engines).

- Endpoints come from the registry: only ready ones with a fresh heartbeat.
- Each call goes to the endpoint with the fewest requests this client has in
  flight there, with a timeout.
- An endpoint that fails (connection refused, timeout, 5xx) leaves the rotation
  for a cool-down and the request is sent elsewhere.
- Requests take SGLang's shape: one image pad per image, which the engine
  expands itself (``return_prompt_token_ids`` shows how); an expansion that
  differs from the caller's is an error, never trained on.
- Interruptible generation: a request cut off by a weight update comes back
  with ``finish_reason`` abort and its partial output. It is resumed with that
  output appended to the prompt and the remaining token budget. Every token
  keeps the weight version that produced it, read from SGLang's
  ``meta_info.weight_versions`` spans.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid

import aiohttp

from asyncwebrl.common.registry import Endpoint, Registry

log = logging.getLogger("asyncwebrl.inference")


class NoEndpoint(Exception):
    """No ready endpoint answered in time."""


class GenerationRefused(Exception):
    """The endpoint refused the request itself (4xx): retrying elsewhere cannot help."""


class BadGeneration(Exception):
    """The endpoint answered 200 with a response that cannot be trained on: a prompt
    expansion that differs from ours, or weight-version spans that do not cover the
    output. Counted and fatal to the episode, never retried into a pass."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def token_versions(meta: dict, n_tokens: int) -> list[str]:
    """One version per output token from SGLang's ``meta_info.weight_versions``
    spans ``[{version, start, end}]``, which must tile ``[0, n_tokens)``."""
    spans = meta.get("weight_versions")
    if not isinstance(spans, list) or not spans:
        raise BadGeneration("weight_versions", f"meta_info.weight_versions missing or empty: {str(spans)[:100]}")
    versions: list[str] = []
    for i, span in enumerate(spans):
        if not isinstance(span, dict) or not isinstance(span.get("version"), str):
            raise BadGeneration("weight_versions", f"span {i} is not {{version, start, end}}: {str(span)[:100]}")
        start, end = span.get("start"), span.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and start == len(versions) <= end <= n_tokens):
            raise BadGeneration("weight_versions", f"span {i} [{start}, {end}) does not follow [0, {len(versions)})")
        versions += [span["version"]] * (end - start)
    if len(versions) != n_tokens:
        raise BadGeneration("weight_versions", f"spans cover {len(versions)} of {n_tokens} output tokens")
    return versions


@dataclasses.dataclass
class Generation:
    output_ids: list[int]
    logprobs: list[float]
    versions: list[str]
    text: str
    finish_reason: dict
    endpoints: list[str]
    resumes: int = 0
    retries: int = 0
    failed_on: list[str] = dataclasses.field(default_factory=list)


class InferenceClient:
    def __init__(self, registry: Registry, api_key: str = "", timeout_s: float = 120.0, refresh_s: float = 1.0,
                 cooldown_s: float = 10.0, max_attempts: int = 6, max_resumes: int = 32,
                 wait_for_endpoint_s: float = 60.0) -> None:
        self.registry = registry
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.refresh_s = refresh_s
        self.cooldown_s = cooldown_s
        self.max_attempts = max_attempts
        self.max_resumes = max_resumes
        self.wait_for_endpoint_s = wait_for_endpoint_s
        self.outstanding: dict[str, int] = {}
        self._endpoints: list[Endpoint] = []
        self._fetched = 0.0
        self._benched: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _live(self) -> list[Endpoint]:
        now = time.monotonic()
        if now - self._fetched > self.refresh_s:
            self._endpoints = await self.registry.live()
            self._fetched = now
        return [e for e in self._endpoints if self._benched.get(e.endpoint_id, 0) <= now]

    async def pick(self) -> Endpoint:
        deadline = time.monotonic() + self.wait_for_endpoint_s
        while True:
            live = await self._live()
            if live:
                return min(live, key=lambda e: (self.outstanding.get(e.endpoint_id, 0), e.endpoint_id))
            if time.monotonic() > deadline:
                raise NoEndpoint("no ready inference endpoint registered for this job")
            await asyncio.sleep(min(0.2, self.refresh_s))
            self._fetched = 0.0

    def bench(self, endpoint_id: str) -> None:
        """Out of rotation for the cool-down (it failed a call)."""
        self._benched[endpoint_id] = time.monotonic() + self.cooldown_s
        self._fetched = 0.0

    async def _post(self, endpoint: Endpoint, body: dict) -> dict:
        if self._session is None:
            # No connection cap: aiohttp's default (100) held a gateway of 1024 episodes to 100 generations in
            # flight (make bench-scale); the gateway's episode slots already bound them.
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0))
        self.outstanding[endpoint.endpoint_id] = self.outstanding.get(endpoint.endpoint_id, 0) + 1
        try:
            async with self._session.post(endpoint.url + "/generate", json=body, headers=self.headers) as resp:
                if 400 <= resp.status < 500:
                    raise GenerationRefused(f"{endpoint.endpoint_id} answered {resp.status}: {(await resp.text())[:300]}")
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                return await resp.json()
        finally:
            self.outstanding[endpoint.endpoint_id] -= 1

    async def generate(self, input_ids: list[int], image_data: list[str], sampling_params: dict,
                       rid: str | None = None, expanded_ids: list[int] | None = None,
                       image_token_id: int | None = None) -> Generation:
        """Generate to the end, across endpoint failures and weight updates.

        ``input_ids`` is the request as SGLang takes it (one pad per image);
        ``expanded_ids`` what the engine must expand it to (checked against its
        ``prompt_token_ids``, resumes included)."""
        rid = rid or uuid.uuid4().hex
        budget = int(sampling_params.get("max_new_tokens", 128))
        result = Generation([], [], [], "", {}, [])
        attempts = 0
        while True:
            if image_token_id is not None and image_token_id in result.output_ids:
                # A resume would send the model's own pad as one more image placeholder.
                raise BadGeneration("resume", "the partial output holds an image placeholder token")
            body = {
                "input_ids": list(input_ids) + result.output_ids,
                "image_data": image_data,
                "sampling_params": {**sampling_params, "max_new_tokens": budget - len(result.output_ids)},
                "return_logprob": True,
                "rid": f"{rid}-{result.resumes}-{attempts}",
            }
            if expanded_ids is not None:
                body["return_prompt_token_ids"] = True
            endpoint = await self.pick()
            try:
                out = await self._post(endpoint, body)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                attempts += 1
                result.retries += 1
                result.failed_on.append(endpoint.endpoint_id)
                self.bench(endpoint.endpoint_id)
                log.warning("endpoint %s failed (%s); retrying elsewhere", endpoint.endpoint_id, type(exc).__name__)
                if attempts >= self.max_attempts:
                    raise NoEndpoint(f"{attempts} attempts failed, last on {endpoint.endpoint_id}") from exc
                continue
            meta = out["meta_info"]
            ids = list(out["output_ids"])
            if expanded_ids is not None and out.get("prompt_token_ids") != list(expanded_ids) + result.output_ids:
                got = out.get("prompt_token_ids")
                raise BadGeneration("prompt_expansion", f"{endpoint.endpoint_id} expanded the prompt to "
                                    f"{len(got) if isinstance(got, list) else got!r} ids, expected "
                                    f"{len(expanded_ids) + len(result.output_ids)} equal to ours")
            logprobs = [lp for lp, _, _ in meta.get("output_token_logprobs", [])]
            if len(logprobs) != len(ids):
                raise BadGeneration("logprobs", f"{len(logprobs)} logprobs for {len(ids)} output tokens")
            result.versions += token_versions(meta, len(ids))
            result.output_ids += ids
            result.logprobs += logprobs
            result.endpoints.append(endpoint.endpoint_id)
            result.finish_reason = meta["finish_reason"]
            if (
                meta["finish_reason"].get("type") == "abort"
                and len(result.output_ids) < budget
                and result.resumes < self.max_resumes
            ):
                # Cut off by a weight update: go on from where it stopped, maybe elsewhere.
                result.resumes += 1
                continue
            result.text = out.get("text", "") if result.resumes == 0 else ""
            return result
