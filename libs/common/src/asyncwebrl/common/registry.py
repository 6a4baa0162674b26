"""The inference endpoint registry: which engines serve a job, and are they alive.

Each endpoint (an embedded engine registers itself; weightsync registers SGLang
pods) writes its record into ``J endpoints`` (one hash per job, field = endpoint
id) every few seconds. A record whose heartbeat is older than the TTL is dead;
one with ``ready`` false is alive but must get no new requests (loading weights,
paused, failed an update). Times are Redis's clock, so skew between hosts does
not matter.

weightsync adds two things the gateway also reads: endpoints it holds back
(``J endpoints:held``: failed an update, or behind and catching up) and the
job's published version (``J weights``). An endpoint is routable when it is
fresh, ready, not held, and serves at least the published version, so a
(re)joining engine gets no work until it has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from asyncwebrl.common.cancel import end_if_cancelled
from asyncwebrl.common.keys import job_prefix

log = logging.getLogger("asyncwebrl.registry")
ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_RECORD = 4096


@dataclasses.dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    url: str
    ready: bool
    weight_version: str
    heartbeat_ms: int
    kind: str = "engine"  # engine | sglang

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> Endpoint | None:
        try:
            raw = json.loads(text)
            ep = cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})
        except (ValueError, TypeError, KeyError):
            return None
        if not ENDPOINT_ID.match(ep.endpoint_id) or not ep.url.startswith(("http://", "https://")):
            return None
        return ep


def endpoints_key(prefix: str, job_id: str) -> str:
    return job_prefix(prefix, job_id) + "endpoints"


def version_number(text: str) -> int | None:
    """An endpoint's weight_version as a number; None for labels that are not one."""
    return int(text) if text.isdigit() and len(text) <= 18 else None


@dataclasses.dataclass(frozen=True)
class Published:
    version: int
    path: str
    checksum: str
    at_ms: int


class Registry:
    def __init__(self, redis: aioredis.Redis, prefix: str, job_id: str, ttl_s: float = 10.0) -> None:
        self.redis = redis
        self.key = endpoints_key(prefix, job_id)
        self.held_key = self.key + ":held"
        self.weights_key = job_prefix(prefix, job_id) + "weights"
        self.ttl_ms = int(ttl_s * 1000)

    async def _now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return sec * 1000 + usec // 1000

    async def heartbeat(self, endpoint_id: str, url: str, ready: bool, weight_version: str,
                        kind: str = "engine") -> None:
        if not ENDPOINT_ID.match(endpoint_id):
            raise ValueError(f"endpoint_id: must match {ENDPOINT_ID.pattern}")
        record = Endpoint(endpoint_id, url, ready, weight_version, await self._now_ms(), kind)
        await self.redis.hset(self.key, endpoint_id, record.to_json())

    async def remove(self, endpoint_id: str) -> None:
        await self.redis.hdel(self.key, endpoint_id)

    async def all(self) -> list[Endpoint]:
        rows = await self.redis.hgetall(self.key)
        out = []
        for field, value in rows.items():
            if len(value) > MAX_RECORD:
                continue
            ep = Endpoint.from_json(value)
            if ep is not None and ep.endpoint_id == field.decode(errors="replace"):
                out.append(ep)
        return sorted(out, key=lambda e: e.endpoint_id)

    async def fresh(self) -> list[Endpoint]:
        """Endpoints whose heartbeat is within the TTL, ready or not."""
        now = await self._now_ms()
        return [e for e in await self.all() if now - e.heartbeat_ms <= self.ttl_ms]

    async def held(self) -> dict[str, str]:
        rows = await self.redis.hgetall(self.held_key)
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in rows.items()}

    async def hold(self, endpoint_id: str, reason: str) -> None:
        await self.redis.hset(self.held_key, endpoint_id, reason[:200])

    async def release(self, endpoint_id: str) -> None:
        await self.redis.hdel(self.held_key, endpoint_id)

    async def published(self) -> Published | None:
        raw = {k.decode(): v.decode(errors="replace") for k, v in (await self.redis.hgetall(self.weights_key)).items()}
        try:
            return Published(int(raw["version"]), raw.get("path", ""), raw.get("checksum", ""),
                             int(raw.get("at_ms", 0)))
        except (KeyError, ValueError):
            return None

    @staticmethod
    def routable(ep: Endpoint, held: dict[str, str], published: Published | None) -> bool:
        if not ep.ready or ep.endpoint_id in held:
            return False
        if published is None:
            return True
        served = version_number(ep.weight_version)
        return served is not None and served >= published.version

    async def live(self) -> list[Endpoint]:
        """Endpoints the gateway may send work to: fresh, ready, not held, not behind."""
        fresh = await self.fresh()
        if not fresh:
            return []
        held, published = await self.held(), await self.published()
        return [e for e in fresh if self.routable(e, held, published)]


class Heartbeat:
    """Keeps one endpoint's record fresh until stopped; ``state()`` gives (ready, version)."""

    def __init__(self, registry: Registry, endpoint_id: str, url: str, state, interval_s: float = 2.0,
                 kind: str = "engine") -> None:
        self.registry = registry
        self.endpoint_id = endpoint_id
        self.url = url
        self.state = state
        self.interval_s = interval_s
        self.kind = kind
        self._task: asyncio.Task | None = None

    async def beat(self) -> None:
        ready, version = self.state()
        await self.registry.heartbeat(self.endpoint_id, self.url, ready, version, self.kind)

    async def _loop(self) -> None:
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                log.warning("registry heartbeat failed: %s", exc)
            end_if_cancelled()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.registry.remove(self.endpoint_id)
