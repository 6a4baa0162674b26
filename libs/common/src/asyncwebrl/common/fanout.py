"""Load a published version into inference endpoints over SGLang's HTTP API.

For each endpoint: ``/pause_generation`` (in-flight requests are aborted, the
queued ones with no output, and the gateway resumes them, keeping each token's
version),
``/update_weights_from_disk {model_path, weight_version}``, and always
``/continue_generation`` afterwards, so a failed load never leaves an endpoint
paused. Endpoints load in parallel, at most ``concurrency`` at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp

from asyncwebrl.common.registry import Endpoint


@dataclasses.dataclass
class LoadResult:
    endpoint_id: str
    ok: bool
    seconds: float
    error: str = ""


async def _post(session: aiohttp.ClientSession, url: str, body: dict, headers: dict) -> dict:
    async with session.post(url, json=body, headers=headers) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"{url.rsplit('/', 1)[-1]} answered {resp.status}: {text[:300]}")
        try:
            reply = await resp.json(content_type=None)
        except ValueError:
            reply = {}
        if isinstance(reply, dict) and reply.get("success") is False:
            raise RuntimeError(f"{url.rsplit('/', 1)[-1]} failed: {str(reply.get('message'))[:300]}")
        return reply if isinstance(reply, dict) else {}


def admin_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def served_version(session: aiohttp.ClientSession, url: str, api_key: str = "") -> str | None:
    """``weight_version`` from the endpoint's ``/model_info``; None when it does not answer it."""
    try:
        async with session.get(url + "/model_info", headers=admin_headers(api_key),
                               timeout=aiohttp.ClientTimeout(total=10)) as resp:
            info = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    return str(info["weight_version"])[:64] if info.get("weight_version") is not None else "unknown"


async def load_version(session: aiohttp.ClientSession, endpoint: Endpoint, model_path: str, version: int,
                       api_key: str = "") -> LoadResult:
    headers = admin_headers(api_key)
    started = time.monotonic()
    paused = False
    try:
        await _post(session, endpoint.url + "/pause_generation", {}, headers)
        paused = True
        await _post(session, endpoint.url + "/update_weights_from_disk",
                    {"model_path": model_path, "weight_version": str(version)}, headers)
        return LoadResult(endpoint.endpoint_id, True, time.monotonic() - started)
    except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as exc:
        return LoadResult(endpoint.endpoint_id, False, time.monotonic() - started, f"{type(exc).__name__}: {exc}"[:500])
    finally:
        if paused:
            try:
                await _post(session, endpoint.url + "/continue_generation", {}, headers)
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError):
                pass  # the endpoint is gone or broken; its heartbeat will say so


async def fan_out(endpoints: list[Endpoint], model_path: str, version: int, api_key: str = "",
                  timeout_s: float = 600.0, concurrency: int = 8) -> list[LoadResult]:
    limit = asyncio.Semaphore(max(1, concurrency))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def one(ep: Endpoint) -> LoadResult:
            async with limit:
                return await load_version(session, ep, model_path, version, api_key)

        return list(await asyncio.gather(*(one(ep) for ep in endpoints)))
