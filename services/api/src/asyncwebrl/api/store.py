"""Jobs in Redis: the document as submitted, its state, and what the buffer's
counters say about its progress.

``P api:jobs`` (zset, job id -> created ms) orders the listing; ``P api:job:<id>``
(hash) holds spec, state, created_ms, updated_ms and reason. The job's own
training data lives under ``J`` (common.keys) and is kept when it is cancelled.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import secrets
import time

from asyncwebrl.api.errors import BadPageToken, StoreFull
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.common.keys import job_prefix

STATES = ("pending", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")


@dataclasses.dataclass
class Job:
    job_id: str
    spec: JobSpec
    state: str
    created_ms: int
    updated_ms: int
    reason: str = ""


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        offset = json.loads(raw)["o"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BadPageToken("page_token: not a token this api issued") from exc
    if not isinstance(offset, int) or not 0 <= offset <= 10_000_000:
        raise BadPageToken("page_token: not a token this api issued")
    return offset


class JobStore:
    def __init__(self, redis, prefix: str, max_jobs: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_jobs = max_jobs
        self.index = f"{prefix}api:jobs"

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}api:job:{job_id}"

    def evals_key(self, job_id: str) -> str:
        """The job's evaluations (hash, n -> JSON), kept by api.evaluate."""
        return f"{self.prefix}api:evals:{job_id}"

    def eval_seq_key(self, job_id: str) -> str:
        return f"{self.prefix}api:evalseq:{job_id}"

    async def evaluation_numbers(self, job_id: str) -> list[int]:
        fields = await self.redis.hkeys(self.evals_key(job_id))
        return sorted(int(n) for n in (f.decode() if isinstance(f, bytes) else str(f) for f in fields) if n.isdigit())

    async def delete(self, job_id: str) -> None:
        """The job's record, its evaluations' records and its place in the listing."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(job_id), self.evals_key(job_id), self.eval_seq_key(job_id))
            pipe.zrem(self.index, job_id)
            await pipe.execute()

    async def create(self, spec: JobSpec) -> Job:
        if await self.redis.zcard(self.index) >= self.max_jobs:
            raise StoreFull(f"{self.max_jobs} jobs stored; delete finished ones first")
        now = int(time.time() * 1000)
        job = Job(f"{spec.name}-{secrets.token_hex(3)}", spec, "pending", now, now)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(job.job_id), mapping={
                "spec": spec.model_dump_json(), "state": job.state, "created_ms": now, "updated_ms": now, "reason": ""})
            pipe.zadd(self.index, {job.job_id: now})
            await pipe.execute()
        return job

    async def get(self, job_id: str) -> Job | None:
        raw = await self.redis.hgetall(self._key(job_id))
        if not raw:
            return None
        d = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
             for k, v in raw.items()}
        return Job(job_id, JobSpec.model_validate_json(d["spec"]), d["state"], int(d["created_ms"]),
                   int(d["updated_ms"]), d.get("reason", ""))

    async def list(self, page_size: int, offset: int) -> tuple[list[Job], int | None]:
        ids = await self.redis.zrevrange(self.index, offset, offset + page_size)
        jobs = [j for j in [await self.get(i.decode() if isinstance(i, bytes) else i) for i in ids[:page_size]] if j]
        return jobs, (offset + page_size if len(ids) > page_size else None)

    async def set_state(self, job_id: str, state: str, reason: str = "") -> None:
        assert state in STATES
        await self.redis.hset(self._key(job_id), mapping={
            "state": state, "reason": reason[:500], "updated_ms": int(time.time() * 1000)})

    async def progress(self, job_id: str) -> dict:
        """What the buffer's counters say: version, groups, steps, rejections."""
        counters = await self.redis.hgetall(job_prefix(self.prefix, job_id) + "counters")
        c = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in counters.items()}
        return {
            "version": c.get("version", 0),
            "groups_accepted": c.get("accepted", 0),
            "groups_consumed": c.get("consumed", 0),
            "steps_consumed": c.get("steps_consumed", 0),
            "rejected": {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("rejected:")},
        }
