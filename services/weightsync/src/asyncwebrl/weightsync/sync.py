"""Publishing a version and keeping every endpoint of a job on it.

Publish verifies the checkpoint before touching any endpoint, then, under the
job's lock in Redis (so racing publishes, from one weightsync replica or
several, apply in order and the older one is refused), loads it into every
fresh endpoint, ``concurrency`` at once, retrying each a few times. An
endpoint that still fails is held (``J endpoints:held``), so the gateway stops
routing to it. Only after the fan-out is the job's published version raised.

The reconciler catches up endpoints that are behind the published version
(restarted, newly scaled, failed earlier), each in the background: it checks
what the endpoint really serves (its record may lag a heartbeat), holds it,
loads the version, and releases it. Loads of one endpoint, by a publish or a
catch-up, take that endpoint's lock, so they never interleave; a catch-up
never loads over a newer version a publish has just put there. The registry's routing rule (serving at
least the published version) keeps a joining endpoint out of rotation even
before the reconciler has seen it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pathlib
import time
import uuid

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

from asyncwebrl.common import fanout
from asyncwebrl.common.cancel import end_if_cancelled
from asyncwebrl.common.keys import job_prefix
from asyncwebrl.common.models import broadcast
from asyncwebrl.common.registry import Endpoint, Published, Registry, version_number
from asyncwebrl.common.weights import CheckpointError, Manifest, read_manifest
from asyncwebrl.weightsync import metrics
from asyncwebrl.weightsync.config import WeightSyncConfig
from asyncwebrl.weightsync.errors import Refused

log = logging.getLogger("asyncwebrl.weightsync")
LOCK_TTL_S = 30.0


@dataclasses.dataclass
class Outcome:
    endpoint_id: str
    ok: bool
    seconds: float
    error: str
    attempts: int


@dataclasses.dataclass
class Group:
    """A broadcast group of one job: weightsync is rank 0, ``members[i]`` rank i + 1."""

    name: str
    port: int
    pg: object
    members: list[Endpoint]

    @property
    def key(self) -> set[tuple[str, str]]:
        return {(e.endpoint_id, e.url) for e in self.members}


def read_tensors(path: pathlib.Path) -> list[tuple[str, object]]:
    """Every tensor of a checkpoint under its checkpoint name, file by file, names sorted in each."""
    from safetensors.torch import load_file

    out = []
    for f in sorted(path.glob("*.safetensors")):
        out.extend(sorted(load_file(f).items()))
    if not out:
        raise CheckpointError(f"no .safetensors files in {path}")
    return out


@dataclasses.dataclass
class PublishResult:
    version: int
    outcomes: list[Outcome]
    seconds: float
    verify_seconds: float
    bytes: int


def _check_path(config: WeightSyncConfig, path: str) -> pathlib.Path:
    if not path or len(path) > 4096 or not path.startswith("/") or "\x00" in path:
        raise Refused("invalid", "path", "must be an absolute path of at most 4096 characters")
    resolved = pathlib.Path(path).resolve()
    if config.roots and not any(resolved.is_relative_to(root) for root in config.roots):
        raise Refused("invalid", "path", f"must be inside one of --checkpoint-roots {config.roots}")
    return resolved


class WeightSync:
    def __init__(self, config: WeightSyncConfig, redis: aioredis.Redis) -> None:
        self.config = config
        self.redis = redis
        self.session: aiohttp.ClientSession | None = None
        self._retry_at: dict[tuple[str, str], float] = {}  # (job, endpoint) -> monotonic time of next catch-up
        self._catching: dict[tuple[str, str], asyncio.Task] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._groups: dict[str, Group] = {}  # job -> its broadcast group (--transport broadcast)
        self.jobs_key = config.key_prefix + "jobs"

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.load_timeout_s))

    async def close(self) -> None:
        for task in list(self._catching.values()):
            task.cancel()
        await asyncio.gather(*self._catching.values(), return_exceptions=True)
        for job_id in list(self._groups):
            with contextlib.suppress(Exception):
                await self._drop_group(job_id)
        if self.session is not None:
            await self.session.close()

    def registry(self, job_id: str) -> Registry:
        return Registry(self.redis, self.config.key_prefix, job_id, self.config.registry_ttl_s)

    def _lock(self, job_id: str, blocking_s: float | None):
        # Short enough that a crashed holder's lock frees soon; _kept() renews it while a fan-out runs.
        return self.redis.lock(job_prefix(self.config.key_prefix, job_id) + "weights:lock", timeout=LOCK_TTL_S,
                               blocking_timeout=blocking_s)

    @contextlib.asynccontextmanager
    async def _kept(self, lock):
        """Hold an acquired lock, renewing it until the block ends; then release it."""
        async def renew() -> None:
            while True:
                await asyncio.sleep(LOCK_TTL_S / 3)
                await lock.reacquire()
                end_if_cancelled()

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LockError, RedisError):
                await task
            with contextlib.suppress(LockError, RedisError):
                await lock.release()

    # --- publish -------------------------------------------------------------

    async def verify(self, job_id: str, version: int, path: str, checksum: str) -> tuple[pathlib.Path, Manifest]:
        if version < 0:
            raise Refused("invalid", "version", "must be >= 0")
        if checksum and (len(checksum) != 64 or any(ch not in "0123456789abcdef" for ch in checksum)):
            raise Refused("invalid", "manifest_checksum", "must be empty or 64 lowercase hex digits")
        resolved = _check_path(self.config, path)
        try:
            manifest = await asyncio.to_thread(read_manifest, resolved, True)
        except CheckpointError as exc:
            raise Refused("invalid", "path", f"checkpoint failed verification: {exc}") from exc
        if manifest.version != version:
            raise Refused("invalid", "version", f"the manifest at path is version {manifest.version}, not {version}")
        if checksum and manifest.checksum != checksum:
            raise Refused("invalid", "manifest_checksum", "does not match the manifest at path")
        return resolved, manifest

    async def publish(self, job_id: str, version: int, path: str, checksum: str) -> PublishResult:
        started = time.monotonic()
        resolved, manifest = await self.verify(job_id, version, path, checksum)
        verify_s = time.monotonic() - started
        metrics.VERIFY_SECONDS.labels(job_id).observe(verify_s)
        reg = self.registry(job_id)
        lock = self._lock(job_id, self.config.load_timeout_s * (self.config.retries + 1))
        if not await lock.acquire():
            raise Refused("busy", "job_id", "another publish of this job did not finish in time")
        async with self._kept(lock):
            published = await reg.published()
            if published is not None and version < published.version:
                raise Refused("old", "version", f"{version} is older than the published version "
                                                f"{published.version}")
            targets = [e for e in await reg.fresh() if version_number(e.weight_version) != version]
            if self.config.transport == "broadcast" and targets:
                outcomes = await self._broadcast_all(job_id, reg, targets, resolved, version, manifest)
            else:
                outcomes = await self._load_all(job_id, reg, targets, str(resolved), version, manifest)
            await self.redis.sadd(self.jobs_key, job_id)
            await self.redis.hset(reg.weights_key, mapping={
                "version": version, "path": str(resolved), "checksum": manifest.checksum,
                "at_ms": int(time.time() * 1000)})
        metrics.PUBLISHED_VERSION.labels(job_id).set(version)
        seconds = time.monotonic() - started
        metrics.PUBLISH_SECONDS.labels(job_id).observe(seconds)
        failed = [o for o in outcomes if not o.ok]
        metrics.PUBLISHES.labels(job_id, "partial" if failed else "ok").inc()
        log.info("published", extra={"job": job_id, "version": version, "endpoints": len(outcomes),
                                     "failed": len(failed), "seconds": round(seconds, 3)})
        return PublishResult(version, outcomes, seconds, verify_s, manifest.total_bytes)

    def _limit(self, job_id: str) -> asyncio.Semaphore:
        """Loads of one job at once, publishes and catch-ups together (they read the same volume)."""
        return self._limits.setdefault(job_id, asyncio.Semaphore(self.config.concurrency))

    async def _load_all(self, job_id: str, reg: Registry, targets: list[Endpoint], path: str, version: int,
                        manifest: Manifest) -> list[Outcome]:
        async def one(ep: Endpoint) -> Outcome:
            async with self._limit(job_id):
                return await self._load(job_id, reg, ep, path, version, manifest, "publish")

        return list(await asyncio.gather(*(one(ep) for ep in targets)))

    # --- broadcast (--transport broadcast) -------------------------------------------------------

    async def _broadcast_all(self, job_id: str, reg: Registry, targets: list[Endpoint], path: pathlib.Path,
                             version: int, manifest: Manifest) -> list[Outcome]:
        """Send the version to ``targets`` by broadcast, weightsync as rank 0 for the trainer; those
        that cannot join or whose update fails get it from disk, so the bookkeeping (records, holding
        back, catch-up) is the disk path's. Each endpoint's lock is held as a disk load holds it."""
        c = self.config
        started = time.monotonic()
        outcomes: list[Outcome] = []
        fallback: list[Endpoint] = []
        async with contextlib.AsyncExitStack() as stack:
            members = []
            for ep in targets:
                lock = self._endpoint_lock(job_id, ep.endpoint_id, c.load_timeout_s * (c.retries + 1))
                if await lock.acquire():
                    await stack.enter_async_context(self._kept(lock))
                    members.append(ep)
                else:
                    fallback.append(ep)  # the disk path reports it (it waits for the lock again)
            errors: dict[str, str] = {}
            try:
                tensors = await asyncio.to_thread(read_tensors, path)
                group, refused = await self._ensure_group(job_id, members)
            except (CheckpointError, OSError, broadcast.BroadcastError) as exc:
                group, refused, tensors = None, {ep.endpoint_id: f"{type(exc).__name__}: {exc}" for ep in members}, []
            errors.update(refused)
            if group is not None:
                errors.update(await self._send_version(job_id, group, tensors, version))
            seconds = time.monotonic() - started
            in_group = {e.endpoint_id for e in group.members} if group is not None else set()
            for ep in members:
                if ep.endpoint_id in errors or ep.endpoint_id not in in_group:
                    errors.setdefault(ep.endpoint_id, "not in the broadcast group")
                    fallback.append(ep)
                    continue
                metrics.LOAD_SECONDS.labels(job_id).observe(seconds)
                metrics.LOADS.labels(job_id, "publish", "ok").inc()
                metrics.BYTES_LOADED.labels(job_id).inc(manifest.total_bytes)
                await reg.release(ep.endpoint_id)
                self._retry_at.pop((job_id, ep.endpoint_id), None)
                await self._record(job_id, ep.endpoint_id, version, True, seconds, "")
                outcomes.append(Outcome(ep.endpoint_id, True, seconds, "", 1))
        metrics.BROADCAST_SECONDS.labels(job_id).observe(time.monotonic() - started)
        result = "ok" if not fallback else ("partial" if outcomes else "failed")
        metrics.BROADCASTS.labels(job_id, result).inc()
        if fallback:
            metrics.BROADCAST_FALLBACKS.labels(job_id).inc(len(fallback))
            log.warning("broadcast: endpoints fall back to disk", extra={
                "job": job_id, "version": version,
                "endpoints": {ep.endpoint_id: errors.get(ep.endpoint_id, "endpoint busy") for ep in fallback}})
        # After the group's locks are released: the disk loads take them again.
        outcomes += await self._load_all(job_id, reg, fallback, str(path), version, manifest)
        return outcomes

    async def _post(self, url: str, route: str, body: dict, timeout_s: float) -> None:
        """POST an admin call; RuntimeError (or a timeout) unless it answered 200 with success."""
        await asyncio.wait_for(fanout._post(self.session, url + route, body,
                                            fanout.admin_headers(self.config.engine_api_key)), timeout_s)

    async def _ensure_group(self, job_id: str, members: list[Endpoint]) -> tuple[Group | None, dict[str, str]]:
        """The job's group with exactly ``members`` (kept from the last publish if its members are the
        same, else rebuilt). Returns it (None if none formed) and the errors of endpoints left out."""
        current = self._groups.get(job_id)
        if current is not None and current.key == {(e.endpoint_id, e.url) for e in members}:
            return current, {}
        if current is not None:
            await self._drop_group(job_id)
        if not members:
            return None, {}
        group, errors, culprits = await self._build_group(job_id, members)
        if group is None and culprits and len(culprits) < len(members):
            # Those that refused at once kept the others waiting; try once more without them.
            rest = [ep for ep in members if ep.endpoint_id not in culprits]
            group, more, _ = await self._build_group(job_id, rest)
            errors = {**{k: v for k, v in errors.items() if k in culprits}, **more}
        if group is not None:
            self._groups[job_id] = group
        return group, errors

    async def _build_group(self, job_id: str, members: list[Endpoint]) -> tuple[Group | None, dict[str, str],
                                                                                  set[str]]:
        """Join a new group as rank 0 while every member joins it. Returns the group (None unless all
        joined), each failed member's error, and the members that failed at once (refused, unreachable)
        rather than by waiting for the others."""
        c = self.config
        name = f"asyncwebrl-{job_id}-{uuid.uuid4().hex[:8]}"
        ports = [0] if c.broadcast_port == 0 else range(c.broadcast_port, c.broadcast_port + c.broadcast_port_count)
        port = broadcast.free_port("0.0.0.0" if ":" not in c.broadcast_host else "::", ports)
        world = len(members) + 1
        started = time.monotonic()
        errors: dict[str, str] = {}
        quick: set[str] = set()

        async def join(rank: int, ep: Endpoint) -> None:
            try:
                await self._post(ep.url, "/init_weights_update_group", {
                    "master_address": c.broadcast_host, "master_port": port, "rank_offset": rank,
                    "world_size": world, "group_name": name, "backend": c.broadcast_backend},
                    c.broadcast_timeout_s + 10)
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as exc:
                errors[ep.endpoint_id] = f"joining the broadcast group: {type(exc).__name__}: {exc}"[:500]
                if time.monotonic() - started < c.broadcast_timeout_s / 2:
                    quick.add(ep.endpoint_id)

        host = asyncio.create_task(asyncio.to_thread(broadcast.init_group, c.broadcast_host, port, 0, world, name,
                                                     c.broadcast_backend, c.broadcast_timeout_s))
        await asyncio.gather(*(join(i + 1, ep) for i, ep in enumerate(members)))
        try:
            pg = await host
        except broadcast.BroadcastError as exc:
            pg = None
            log.warning("broadcast group did not form", extra={"job": job_id, "error": str(exc)})
        group = Group(name, port, pg, members)
        if pg is None or errors:
            metrics.GROUP_BUILDS.labels(job_id, "failed").inc()
            joined = [ep for ep in members if ep.endpoint_id not in errors]
            await self._destroy(group, joined)
            for ep in joined:
                errors[ep.endpoint_id] = "the broadcast group did not form"
            return None, errors, quick
        metrics.GROUP_BUILDS.labels(job_id, "ok").inc()
        log.info("broadcast group formed", extra={"job": job_id, "group": name, "port": port,
                                                  "endpoints": [e.endpoint_id for e in members]})
        return group, {}, quick

    async def _destroy(self, group: Group, members: list[Endpoint]) -> None:
        async def one(ep: Endpoint) -> None:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, RuntimeError):
                await self._post(ep.url, "/destroy_weights_update_group", {"group_name": group.name}, 30)

        await asyncio.gather(*(one(ep) for ep in members))
        if group.pg is not None:
            await asyncio.to_thread(broadcast.destroy_group, group.pg)

    async def _drop_group(self, job_id: str) -> None:
        group = self._groups.pop(job_id, None)
        if group is not None:
            await self._destroy(group, group.members)

    async def _send_version(self, job_id: str, group: Group, tensors: list, version: int) -> dict[str, str]:
        """Pause every member, post the update to all of them while broadcasting, continue them.
        Returns the errors of members that did not take the version; any failure drops the group."""
        c = self.config
        errors: dict[str, str] = {}
        paused: list[Endpoint] = []

        async def pause(ep: Endpoint) -> None:
            try:
                await self._post(ep.url, "/pause_generation", {}, c.load_timeout_s)
                paused.append(ep)
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as exc:
                errors[ep.endpoint_id] = f"pause_generation: {type(exc).__name__}: {exc}"[:500]

        async def update(ep: Endpoint, body: dict) -> None:
            try:
                await self._post(ep.url, "/update_weights_from_distributed", body, c.broadcast_timeout_s + 10)
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as exc:
                errors.setdefault(ep.endpoint_id, f"update_weights_from_distributed: {type(exc).__name__}: "
                                                  f"{exc}"[:500])

        async def session(ep: Endpoint, route: str) -> None:
            """SGLang >= 0.5.23 takes a distributed update only inside a weight-update session (its
            scheduler's weight_updater refuses one outside it without receiving, and the broadcast would wait
            for it until its timeout); older servers and the embedded engine have no such route (404)."""
            try:
                await self._post(ep.url, route, {}, c.load_timeout_s)
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as exc:
                if " answered 404" not in str(exc):
                    errors.setdefault(ep.endpoint_id, f"{route.lstrip('/')}: {type(exc).__name__}: {exc}"[:500])
                    return
            opened.append(ep)

        complete = False
        opened: list[Endpoint] = []
        applied = 0  # update requests every member took: with buckets, a part of the version
        try:
            await asyncio.gather(*(pause(ep) for ep in group.members))
            if not errors:
                await asyncio.gather(*(session(ep, "/begin_weight_update") for ep in group.members))
            if not errors:  # a member that is not paused would not take its part of the broadcast
                device = "cuda" if c.broadcast_backend == "nccl" else "cpu"
                runs = broadcast.buckets(tensors, c.broadcast_bucket_mb * 1024 * 1024)
                for i, run in enumerate(runs):
                    body = {**broadcast.specs(run), "group_name": group.name, "flush_cache": i == len(runs) - 1}
                    if i == len(runs) - 1:
                        body["weight_version"] = str(version)
                    send = asyncio.to_thread(broadcast.send, group.pg, [(n, t.to(device)) for n, t in run])
                    sent = await asyncio.gather(send, *(update(ep, body) for ep in group.members),
                                                return_exceptions=True)
                    if isinstance(sent[0], BaseException):
                        for ep in group.members:
                            errors.setdefault(ep.endpoint_id, f"broadcast: {sent[0]}"[:500])
                        break
                    if errors and i < len(runs) - 1:  # a member missed a run: the rest would not complete it
                        break
                    applied += i < len(runs) - 1
                else:
                    complete = True
        finally:
            async def end(ep: Endpoint) -> None:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, RuntimeError):
                    await self._post(ep.url, "/end_weight_update", {}, c.load_timeout_s)

            async def resume(ep: Endpoint) -> None:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, RuntimeError):
                    await self._post(ep.url, "/continue_generation", {}, c.load_timeout_s)

            if not complete:  # nobody has the whole version (and its weight_version)
                for ep in group.members:
                    errors.setdefault(ep.endpoint_id, "the broadcast stopped for another member")
            await asyncio.gather(*(end(ep) for ep in opened if ep in paused))
            # A member that failed after earlier buckets of the version landed on it holds part of a version: it
            # stays paused until the disk path, which it falls back to, loads the whole version and continues it.
            await asyncio.gather(*(resume(ep) for ep in paused if not (applied and ep.endpoint_id in errors)))
        if errors:
            await self._drop_group(job_id)
        return errors

    def _endpoint_lock(self, job_id: str, endpoint_id: str, blocking_s: float | None):
        """One load at a time per endpoint: a catch-up and a publish never interleave on it."""
        return self.redis.lock(job_prefix(self.config.key_prefix, job_id) + f"weights:lock:{endpoint_id}",
                               timeout=LOCK_TTL_S, blocking_timeout=blocking_s)

    async def _served(self, ep: Endpoint) -> int | None:
        """The version the endpoint really serves (its registry record may lag by a heartbeat)."""
        return version_number(await fanout.served_version(self.session, ep.url, self.config.engine_api_key) or "")

    async def _load(self, job_id: str, reg: Registry, ep: Endpoint, path: str, version: int, manifest: Manifest,
                    cause: str) -> Outcome | None:
        """Load one endpoint (retried). A catch-up does not wait for the endpoint's lock, and skips an
        endpoint that already serves the version or a newer one (None then)."""
        c = self.config
        catch_up = cause == "catch_up"
        lock = self._endpoint_lock(job_id, ep.endpoint_id, 0 if catch_up else c.load_timeout_s * (c.retries + 1))
        if not await lock.acquire(blocking=not catch_up):
            if catch_up:
                return None
            return Outcome(ep.endpoint_id, False, 0.0, "another load of this endpoint did not finish in time", 0)
        async with self._kept(lock):
            if catch_up:
                served = await self._served(ep)
                if served is not None and served >= version:
                    await reg.release(ep.endpoint_id)
                    return None
                await reg.hold(ep.endpoint_id, f"behind: serves {ep.weight_version}, published {version}")
            started = time.monotonic()
            result = None
            attempts = 0
            for attempts in range(1, c.retries + 2):
                result = await fanout.load_version(self.session, ep, path, version, c.engine_api_key)
                if result.ok:
                    break
                if attempts <= c.retries:
                    await asyncio.sleep(c.retry_backoff_s * 2 ** (attempts - 1))
            seconds = time.monotonic() - started
            metrics.LOAD_SECONDS.labels(job_id).observe(seconds)
            metrics.LOADS.labels(job_id, cause, "ok" if result.ok else "failed").inc()
            if result.ok:
                metrics.BYTES_LOADED.labels(job_id).inc(manifest.total_bytes)
                await reg.release(ep.endpoint_id)
                self._retry_at.pop((job_id, ep.endpoint_id), None)
            else:
                metrics.LOAD_FAILURES.labels(job_id).inc()
                await reg.hold(ep.endpoint_id, f"failed to load version {version}: {result.error}")
                log.warning("endpoint failed to load", extra={"job": job_id, "endpoint": ep.endpoint_id,
                                                              "version": version, "error": result.error})
            await self._record(job_id, ep.endpoint_id, version, result.ok, seconds, result.error)
        return Outcome(ep.endpoint_id, result.ok, seconds, result.error, attempts)

    async def _record(self, job_id: str, endpoint_id: str, version: int, ok: bool, seconds: float,
                      error: str) -> None:
        key = job_prefix(self.config.key_prefix, job_id) + "weights:endpoints"
        old = await self.redis.hget(key, endpoint_id)
        failures = 0
        if old:
            try:
                failures = int(json.loads(old).get("failures", 0))
            except (ValueError, AttributeError, TypeError):
                failures = 0
        record = {"version": version, "ok": ok, "seconds": round(seconds, 4), "error": error[:500],
                  "failures": failures + (not ok), "at_ms": int(time.time() * 1000)}
        await self.redis.hset(key, endpoint_id, json.dumps(record))

    async def last_syncs(self, job_id: str) -> dict[str, dict]:
        rows = await self.redis.hgetall(job_prefix(self.config.key_prefix, job_id) + "weights:endpoints")
        out = {}
        for k, v in rows.items():
            try:
                record = json.loads(v)
            except ValueError:
                continue
            if isinstance(record, dict):
                out[k.decode(errors="replace")] = record
        return out

    # --- catching up ---------------------------------------------------------

    async def jobs(self) -> list[str]:
        return sorted(m.decode(errors="replace") for m in await self.redis.smembers(self.jobs_key))

    async def reconcile(self, job_id: str) -> None:
        """Start catching up fresh endpoints whose record is behind the published version (in the
        background: one hung endpoint must not stall the others); refresh the gauges."""
        reg = self.registry(job_id)
        fresh = await reg.fresh()
        published = await reg.published()
        self._gauges(job_id, fresh, await reg.held())
        if published is None:
            return
        now = time.monotonic()
        for ep in fresh:
            key = (job_id, ep.endpoint_id)
            if (version_number(ep.weight_version) or -1) < published.version and key not in self._catching \
                    and self._retry_at.get(key, 0) <= now:
                self._catching[key] = asyncio.create_task(self._catch_up(job_id, reg, ep, published))

    async def _catch_up(self, job_id: str, reg: Registry, ep: Endpoint, published: Published) -> None:
        key = (job_id, ep.endpoint_id)
        try:
            manifest = await asyncio.to_thread(read_manifest, pathlib.Path(published.path), False)
            async with self._limit(job_id):
                outcome = await self._load(job_id, reg, ep, published.path, published.version, manifest,
                                           "catch_up")
            if outcome is None:
                return
            if not outcome.ok:
                failures = (await self.last_syncs(job_id)).get(ep.endpoint_id, {}).get("failures", 1)
                self._retry_at[key] = time.monotonic() + min(
                    300.0, max(1.0, self.config.retry_backoff_s) * 2 ** min(8, int(failures)))
            log.info("catch-up", extra={"job": job_id, "endpoint": ep.endpoint_id, "version": published.version,
                                        "ok": outcome.ok, "seconds": round(outcome.seconds, 3)})
        except CheckpointError as exc:
            log.error("the published version is unreadable", extra={"job": job_id, "error": str(exc)})
            self._retry_at[key] = time.monotonic() + 30
        except RedisError as exc:
            log.warning("catch-up interrupted: %s", exc)
        finally:
            self._catching.pop(key, None)

    def _gauges(self, job_id: str, fresh: list[Endpoint], held: dict[str, str]) -> None:
        counts: dict[str, int] = {}
        for e in fresh:
            counts[e.weight_version] = counts.get(e.weight_version, 0) + 1
        for labels in list(metrics.ENDPOINTS._metrics):  # versions nobody serves any more
            if labels[0] == job_id and labels[1] not in counts:
                metrics.ENDPOINTS.remove(*labels)
        for version, n in counts.items():
            metrics.ENDPOINTS.labels(job_id, version).set(n)
        metrics.HELD.labels(job_id).set(len([e for e in fresh if e.endpoint_id in held]))

    async def status(self, job_id: str) -> tuple[Published | None, list[dict]]:
        reg = self.registry(job_id)
        everything = await reg.all()
        held, published, syncs = await reg.held(), await reg.published(), await self.last_syncs(job_id)
        sec, usec = await self.redis.time()
        now_ms = sec * 1000 + usec // 1000
        rows = []
        for e in everything:
            fresh = now_ms - e.heartbeat_ms <= reg.ttl_ms
            sync = syncs.get(e.endpoint_id, {})
            rows.append({
                "endpoint": e, "fresh": fresh, "routable": fresh and reg.routable(e, held, published),
                "held": held.get(e.endpoint_id, ""), "age_s": max(0.0, (now_ms - e.heartbeat_ms) / 1000),
                "last_sync_seconds": float(sync.get("seconds", 0.0)), "last_error": str(sync.get("error", "")),
                "failures": int(sync.get("failures", 0)),
            })
        return published, rows
