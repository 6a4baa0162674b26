"""Task sets in Redis: named, parsed WebGym task files (``common.webgym``), kept by the api and read by the
rollout gateway. This module owns their key layout (``P`` is the deployment's key prefix):

==============================  ======  ==========================================================
key                             type    what
==============================  ======  ==========================================================
``P tasksets``                  zset    every set's name, score 0: listed in name order (ZRANGEBYLEX)
``P tasksets:bytes``            hash    name -> bytes its tasks take in Redis (the total is bounded)
``P taskset:<name>:meta``       string  JSON: name, created_ms, tasks, bytes, sha256 (of the file),
                                        by_level {"1".."10": n}, by_difficulty {easy, medium, hard},
                                        by_split {train, test, test_ood}, source
``P taskset:<name>:tasks``      list    one JSON task per element (``WebGymTask.record()``), in file order
==============================  ======  ==========================================================

A set is written whole, in one MULTI/EXEC guarded by WATCH on the index, so a reader sees all of it or none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import WatchError

from asyncwebrl.common.webgym import SPLITS, WebGymTask

NAME = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"  # also the job document's tasks.taskset
MAX_SETS = 1_000
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_PAGE = 1_000


def is_name(name: str) -> bool:
    return isinstance(name, str) and re.fullmatch(NAME, name) is not None


class TaskSetExists(Exception):
    """A set of that name is stored (and replace was not asked for)."""


class TaskSetsFull(Exception):
    """Storing the set would pass MAX_SETS sets or the store's total bytes."""


@dataclasses.dataclass(frozen=True)
class TaskSetPage:
    meta: dict[str, Any]
    tasks: list[dict[str, Any]]
    next_cursor: int | None


def describe(name: str, tasks: list[WebGymTask], sha256: str, source: str = "") -> dict[str, Any]:
    """A set's meta (without ``bytes``, which ``put`` adds)."""
    by_level = {str(n): 0 for n in range(1, 11)}
    by_difficulty = {"easy": 0, "medium": 0, "hard": 0}
    by_split = dict.fromkeys(SPLITS, 0)
    for t in tasks:
        by_level[str(t.level)] += 1
        by_difficulty[t.difficulty] += 1
        by_split[t.split] += 1
    return {"name": name, "created_ms": int(time.time() * 1000), "tasks": len(tasks), "sha256": sha256,
            "by_level": by_level, "by_difficulty": by_difficulty, "by_split": by_split, "source": source}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class TaskSetStore:
    def __init__(self, redis, prefix: str, max_sets: int = MAX_SETS, max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_sets = max_sets
        self.max_total_bytes = max_total_bytes
        self.index = f"{prefix}tasksets"
        self.sizes = f"{prefix}tasksets:bytes"

    def meta_key(self, name: str) -> str:
        return f"{self.prefix}taskset:{name}:meta"

    def tasks_key(self, name: str) -> str:
        return f"{self.prefix}taskset:{name}:tasks"

    async def put(self, name: str, tasks: list[WebGymTask], sha256: str, source: str = "",
                  replace: bool = False) -> dict[str, Any]:
        """Store the set; TaskSetExists if the name is taken (unless ``replace``), TaskSetsFull over the bounds.
        Returns its meta."""
        if not is_name(name):
            raise ValueError(f"name: must match {NAME}")
        records = [json.dumps(t.record(), separators=(",", ":")) for t in tasks]
        meta = describe(name, tasks, sha256, source)
        meta["bytes"] = sum(len(r.encode()) for r in records)
        for _ in range(20):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.index, self.sizes)
                    exists = await pipe.zscore(self.index, name) is not None
                    if exists and not replace:
                        raise TaskSetExists(f"name: a task set {name!r} exists (replace it, or delete it first)")
                    count = await pipe.zcard(self.index)
                    if not exists and count >= self.max_sets:
                        raise TaskSetsFull(f"{self.max_sets} task sets stored; delete some first")
                    sizes = {_text(k): int(v) for k, v in (await pipe.hgetall(self.sizes)).items()}
                    total = sum(v for k, v in sizes.items() if k != name) + meta["bytes"]
                    if total > self.max_total_bytes:
                        raise TaskSetsFull(f"task sets would take {total} bytes, over {self.max_total_bytes}")
                    pipe.multi()
                    pipe.delete(self.tasks_key(name))
                    for start in range(0, len(records), 1000):
                        pipe.rpush(self.tasks_key(name), *records[start:start + 1000])
                    pipe.set(self.meta_key(name), json.dumps(meta))
                    pipe.hset(self.sizes, name, meta["bytes"])
                    pipe.zadd(self.index, {name: 0})
                    await pipe.execute()
                    return meta
                except WatchError:
                    continue
        raise TaskSetsFull("task sets: too many concurrent changes; retry")

    async def meta(self, name: str) -> dict[str, Any] | None:
        if not is_name(name):
            return None
        raw = await self.redis.get(self.meta_key(name))
        return json.loads(raw) if raw else None

    async def exists(self, name: str) -> bool:
        return is_name(name) and await self.redis.zscore(self.index, name) is not None

    async def get(self, name: str, offset: int = 0, limit: int = 100) -> TaskSetPage | None:
        """The set's meta and ``limit`` of its tasks from ``offset``; None if there is no such set."""
        meta = await self.meta(name)
        if meta is None:
            return None
        limit = max(0, min(limit, MAX_PAGE))
        raw = await self.redis.lrange(self.tasks_key(name), offset, offset + limit - 1) if limit else []
        nxt = offset + limit if limit and offset + limit < meta["tasks"] else None
        return TaskSetPage(meta, [json.loads(r) for r in raw], nxt)

    async def tasks(self, name: str) -> Iterable[dict[str, Any]]:
        """Every task of the set (what a gateway loads), in file order; empty if there is no such set."""
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            raw = await self.redis.lrange(self.tasks_key(name), start, start + MAX_PAGE - 1)
            out += [json.loads(r) for r in raw]
            if len(raw) < MAX_PAGE:
                return out
            start += MAX_PAGE

    async def list(self, cursor: str = "", limit: int = 50) -> tuple[list[dict[str, Any]], str]:
        """Metas of up to ``limit`` sets in name order after ``cursor`` (a name; "" from the start), and the
        cursor of the next page ("" at the end)."""
        limit = max(1, min(limit, MAX_PAGE))
        low = f"({cursor}" if cursor else "-"
        names = [_text(n) for n in await self.redis.zrangebylex(self.index, low, "+", start=0, num=limit + 1)]
        page = names[:limit]
        metas = [m for m in [await self.meta(n) for n in page] if m]
        return metas, (page[-1] if len(names) > limit else "")

    async def delete(self, name: str) -> bool:
        """Whether there was such a set."""
        if not is_name(name):
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.index, name)
            pipe.delete(self.meta_key(name), self.tasks_key(name))
            pipe.hdel(self.sizes, name)
            removed, *_ = await pipe.execute()
        return bool(removed)
