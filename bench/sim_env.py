"""A FAKE envfleet for the scale simulator (``make bench-scale``): no browser, drawn outcomes.

Real envfleet runs one Chromium context per episode; hundreds of them cannot run on a small machine.
This fake serves the real ``EnvService`` gRPC API (auth, health, /metrics, /healthz through the
services' ``ServiceRunner``) so the real rollout gateway drives it unchanged, and it stores its
screenshots exactly as envfleet does: real JPEG bytes through the buffer's ``PutBlobs``
(envfleet's own ``BufferBlobs``), so the buffer, its blob budget and sha256 dedup see real load.

What is simulated, per Allocate (drawn independently, so a GRPO group gets mixed outcomes):
success with probability ``--success-rate``; a success ends ``done, reward 1.0`` after a geometric
length of mean ``--success-steps-mean`` (5.1 in the AsyncWebRL paper); a failure ends ``done,
reward 0.0`` after a geometric length of mean ``--failure-steps-mean`` (12.5), or, for
``--failure-runaway-fraction`` of failures, never ends on its own (the gateway's step limit ends
it). Actions are checked but not interpreted (an answer does not end the episode). Latencies are
lognormal (median, p90), divided by ``--time-scale``, slept asynchronously. Each observation shows
one of ``--screenshot-pool`` JPEGs made at start. ``--crash-rate``: a Step's browser "dies".

Status codes are envfleet's (services/envfleet/src/asyncwebrl/envfleet/service.py ``_STATUS``,
fleet.py, pool.py): a browser crash mid-step is ABORTED (``EnvFault``; the session is gone and a
later Step on it is ABORTED again, as pool.lookup's tombstone answers); every slot busy is
RESOURCE_EXHAUSTED; an unknown task or an unknown/ended session is NOT_FOUND; a malformed id or a
bad field is INVALID_ARGUMENT naming it; a Step after done is FAILED_PRECONDITION; the buffer away
is UNAVAILABLE, past its blob budget (after ``--blob-wait-s``) RESOURCE_EXHAUSTED, refusing INTERNAL.

Run: ``python bench/sim_env.py --grpc-port P --http-port Q --buffer-target HOST:PORT
--auth-token T ...`` (``--help`` lists every flag; ``ASYNCWEBRL_<FLAG>`` variables work too).
Counters: the ``Stats`` RPC and ``sim_env_*`` on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import io
import logging
import os
import random
import sys
import time
import uuid

import grpc
import numpy as np
from PIL import Image, ImageDraw
from prometheus_client import Counter, Gauge

from asyncwebrl.common.blobstore import BlobBudgetExceeded, BlobRef
from asyncwebrl.common.config import option, parse_config, redacted, require
from asyncwebrl.common.grpcserver import ServiceRunner, run_service
from asyncwebrl.common.keys import DEFAULT_JOB
from asyncwebrl.common.logs import setup_logging
from asyncwebrl.common.service_config import GrpcConfig, require_target
from asyncwebrl.envfleet.blobs import BufferBlobs  # importable without Chromium (no playwright)
from asyncwebrl.envfleet.errors import BufferRejected, Unavailable
from asyncwebrl.v1 import env_pb2, env_pb2_grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_common import geometric, lognormal  # noqa: E402  (one owner of the fakes' distributions)

log = logging.getLogger("asyncwebrl.sim_env")

ALLOCATIONS = Counter("sim_env_allocations_total", "Allocate answers, by result.", ["result"])
STEPS = Counter("sim_env_steps_total", "Steps answered with an observation.")
CRASHES = Counter("sim_env_crashes_total", "Simulated browser crashes (Step answered ABORTED).")
EPISODES = Counter("sim_env_episodes_total", "Episodes that reached done, by drawn outcome.", ["outcome"])
SCREENSHOTS = Counter("sim_env_screenshots_stored_total", "Screenshots stored through the buffer's PutBlobs.")
SCREENSHOT_BYTES = Counter("sim_env_screenshot_bytes_total", "Bytes of the screenshots stored.")
EXPIRED = Counter("sim_env_expired_leases_total", "Leases ended by the idle or owner timeout.")
SESSIONS = Gauge("sim_env_sessions", "Sessions leased now.")

_HEX = frozenset("0123456789abcdef")
_OWNER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")
_TOMBSTONES = 10_000  # ended sessions remembered so a late Step gets the right status (as envfleet)
CRASH = "environment fault: the browser crashed (simulated)"


@dataclasses.dataclass(kw_only=True)
class SimEnvConfig(GrpcConfig):
    """FAKE envfleet (scale simulator): EnvService with drawn episodes, screenshots stored through the buffer."""

    grpc_port: int = option(50061, "gRPC port; 0 picks a free one.")
    http_port: int = option(9461, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    buffer_target: str = option("", "buffer gRPC address (HOST:PORT), required: screenshots go to its PutBlobs.")
    buffer_timeout_s: float = option(5.0, "Deadline of one PutBlobs call.")
    blob_wait_s: float = option(10.0, "Past the buffer's blob budget, how long a call waits before RESOURCE_EXHAUSTED.")
    tasks: int = option(100, "Tasks served, named sim/task-<i>.")
    medium_fraction: float = option(0.3, "Fraction of the tasks that are medium (the last ones before the hard).")
    hard_fraction: float = option(0.0, "Fraction of the tasks that are hard (the last ones); the rest are easy.")
    seed: int = option(0, "Seed of every draw (outcomes, latencies, screenshots, crashes).")
    time_scale: float = option(1.0, "Every latency is divided by this (100 runs a 1 s step in 10 ms).")
    success_rate: float = option(0.5, "Probability that an episode succeeds (drawn per Allocate).")
    success_steps_mean: float = option(5.1, "Mean steps of a success (geometric, at least 1; AsyncWebRL: 5.1).")
    failure_steps_mean: float = option(12.5, "Mean steps of a failure (geometric, at least 1; AsyncWebRL: 12.5).")
    failure_runaway_fraction: float = option(0.0, "Fraction of failures that never end on their own.")
    step_median_s: float = option(1.0, "Median Step latency (browser action + screenshot), lognormal.")
    step_p90_s: float = option(2.5, "90th percentile of the Step latency.")
    allocate_median_s: float = option(2.0, "Median Allocate latency (new context + page load + screenshot).")
    allocate_p90_s: float = option(5.0, "90th percentile of the Allocate latency.")
    crash_rate: float = option(0.0, "Probability per Step that the browser crashes (ABORTED, session gone).")
    screenshot_pool: int = option(32, "Distinct JPEGs made at start; each observation shows one at random.")
    screenshot_width: int = option(1280, "Screenshot width in pixels (the only viewport served).")
    screenshot_height: int = option(720, "Screenshot height in pixels.")
    screenshot_quality: int = option(80, "JPEG quality of the pool.")
    max_sessions: int = option(64, "Concurrent leases (envfleet's browsers x contexts); RESOURCE_EXHAUSTED past it.")
    lease_timeout_s: float = option(300.0, "An idle session (no Step) is reclaimed after this many seconds.")
    owner_ttl_s: float = option(20.0, "A session whose owner has not renewed for this long is reclaimed.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.buffer_target), "buffer_target", "is required (the buffer's HOST:PORT)")
        require_target(self.buffer_target, "buffer_target")
        require(0.1 <= self.buffer_timeout_s <= 120, "buffer_timeout_s", "must be in [0.1, 120]")
        require(0 <= self.blob_wait_s <= 600, "blob_wait_s", "must be in [0, 600]")
        require(1 <= self.tasks <= 100_000, "tasks", "must be in [1, 100000]")
        for name in ("medium_fraction", "hard_fraction", "success_rate", "failure_runaway_fraction", "crash_rate"):
            require(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")
        require(self.medium_fraction + self.hard_fraction <= 1, "hard_fraction", "medium + hard must be at most 1")
        require(0.001 <= self.time_scale <= 1e6, "time_scale", "must be in [0.001, 1e6]")
        for name in ("success_steps_mean", "failure_steps_mean"):
            require(1 <= getattr(self, name) <= 1000, name, "must be in [1, 1000]")
        for kind in ("step", "allocate"):
            median, p90 = getattr(self, f"{kind}_median_s"), getattr(self, f"{kind}_p90_s")
            require(0 < median <= 600, f"{kind}_median_s", "must be in (0, 600]")
            require(median <= p90 <= 600, f"{kind}_p90_s", f"must be in [{kind}_median_s, 600]")
        require(1 <= self.screenshot_pool <= 1024, "screenshot_pool", "must be in [1, 1024]")
        require(64 <= self.screenshot_width <= 4096, "screenshot_width", "must be in [64, 4096]")
        require(64 <= self.screenshot_height <= 4096, "screenshot_height", "must be in [64, 4096]")
        require(1 <= self.screenshot_quality <= 100, "screenshot_quality", "must be in [1, 100]")
        require(1 <= self.max_sessions <= 100_000, "max_sessions", "must be in [1, 100000]")
        require(self.lease_timeout_s >= 1, "lease_timeout_s", "must be at least 1")
        require(1 <= self.owner_ttl_s <= 3600, "owner_ttl_s", "must be in [1, 3600]")


def screenshot(rng: random.Random, width: int, height: int, quality: int) -> bytes:
    """A web-page-like JPEG: light page, header bar, glyph-like text runs and a few photo-like noisy blocks
    (which carry most of a real screenshot's bytes); ~75-110 KB at 1280x720, quality 80."""
    nrng = np.random.default_rng(rng.getrandbits(64))
    img = Image.new("RGB", (width, height), tuple(rng.randint(235, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width, height // 12], fill=tuple(rng.randint(0, 200) for _ in range(3)))
    for _ in range(rng.randint(1, 3)):
        bw, bh = rng.randint(width // 8, width // 3), rng.randint(height // 8, height // 3)
        block = np.clip(nrng.integers(0, 256, 3) + nrng.normal(0, 22, (bh, bw, 3)), 0, 255).astype(np.uint8)
        img.paste(Image.fromarray(block), (rng.randint(0, width - bw), rng.randint(height // 12, height - bh)))
    y = height // 10
    while y < height - 12:
        x, end = rng.randint(10, max(11, width // 10)), rng.randint(width // 5, width // 2)
        while x < end:
            w = rng.randint(3, 9)
            draw.rectangle([x, y, x + w, y + rng.randint(6, 11)], fill=(rng.randint(0, 90),) * 3)
            x += w + rng.choice((2, 2, 3, 9))
        y += rng.randint(18, 60)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


class SimError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(eq=False)
class Session:
    id: str
    task: env_pb2.TaskInfo
    job_id: str
    owner: str
    success: bool
    length: int  # steps until done; 0 = never ends on its own (a runaway failure)
    last_used: float
    step_index: int = 0
    done: bool = False
    last_sha: str = ""
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class SimEnv(env_pb2_grpc.EnvServiceServicer):
    def __init__(self, config: SimEnvConfig, blobs: BufferBlobs) -> None:
        self.config, self.blobs = config, blobs
        self.episode_rng = random.Random(config.seed)  # outcomes only: their draws do not depend on timing
        self.rng = random.Random(config.seed + 1)  # latencies, screenshots, crashes
        shot_rng = random.Random(config.seed + 2)
        self.pool = [screenshot(shot_rng, config.screenshot_width, config.screenshot_height,
                                config.screenshot_quality) for _ in range(config.screenshot_pool)]
        n = config.tasks
        n_hard, n_medium = round(n * config.hard_fraction), round(n * config.medium_fraction)
        self.tasks: dict[str, env_pb2.TaskInfo] = {}
        for i in range(n):
            difficulty = "hard" if i >= n - n_hard else "medium" if i >= n - n_hard - n_medium else "easy"
            self.tasks[f"sim/task-{i}"] = env_pb2.TaskInfo(
                name=f"sim/task-{i}", source="sim", difficulty=difficulty,
                default_viewport=env_pb2.Viewport(width=config.screenshot_width, height=config.screenshot_height),
                description="simulated task (FAKE envfleet)")
        self.sessions: dict[str, Session] = {}
        self.ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.owners: dict[str, float] = {}
        self.reserved = 0  # slots held by Allocates still "loading"
        self.steps_total = self.faults_total = self.expired_total = 0

    # ------------------------------------------------------------------ helpers

    def _latency(self, median: float, p90: float) -> float:
        return lognormal(self.rng, median, p90) / self.config.time_scale

    def _end(self, session_id: str, why: str) -> None:
        if self.sessions.pop(session_id, None) is not None:
            self.ended[session_id] = why
            while len(self.ended) > _TOMBSTONES:
                self.ended.popitem(last=False)
        SESSIONS.set(len(self.sessions))

    @staticmethod
    def _check_id(session_id: str) -> None:
        if len(session_id) != 32 or not set(session_id) <= _HEX:
            raise SimError(grpc.StatusCode.INVALID_ARGUMENT,
                           "session_id: must be the 32-character id Allocate returned")

    def _lookup(self, session_id: str) -> Session:
        self._check_id(session_id)
        session = self.sessions.get(session_id)
        if session is not None:
            return session
        why = self.ended.get(session_id)
        if why and why.startswith("environment fault"):
            raise SimError(grpc.StatusCode.ABORTED, why)
        raise SimError(grpc.StatusCode.NOT_FOUND, f"session {session_id}: {why or 'unknown session'}")

    @staticmethod
    def _check_owner(owner: str) -> None:
        if len(owner) > 128 or not set(owner) <= _OWNER_CHARS:
            raise SimError(grpc.StatusCode.INVALID_ARGUMENT, "owner: must match [A-Za-z0-9_.:-]{0,128}")

    async def _observe(self, session: Session) -> tuple[env_pb2.Observation, bool]:
        """A pool screenshot stored through the buffer (waiting out its blob budget, as envfleet's observer)."""
        index = self.rng.randrange(len(self.pool))
        data = self.pool[index]
        deadline = time.monotonic() + self.config.blob_wait_s
        delay = 0.05
        while True:
            try:
                ref: BlobRef = await self.blobs.put(session.job_id or DEFAULT_JOB, data, "image/jpeg",
                                                    self.config.screenshot_width, self.config.screenshot_height)
                break
            except BlobBudgetExceeded as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SimError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)
            except Unavailable as exc:
                raise SimError(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
            except BufferRejected as exc:
                raise SimError(grpc.StatusCode.INTERNAL, str(exc)) from exc
        SCREENSHOTS.inc()
        SCREENSHOT_BYTES.inc(len(data))
        changed = ref.sha256 != session.last_sha
        session.last_sha = ref.sha256
        observation = env_pb2.Observation(
            screenshot=env_pb2.ScreenshotRef(sha256=ref.sha256, width=ref.width, height=ref.height, mime=ref.mime,
                                             size_bytes=ref.size_bytes),
            url=f"https://sim.invalid/{session.task.name}/page-{index}", title=f"Simulated page {index}",
            instruction=f"Simulated task {session.task.name}: do what it asks.", step_index=session.step_index)
        return observation, changed

    async def reap(self) -> None:
        """End leases idle past --lease-timeout-s or whose owner stopped renewing (a killed gateway)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                stale_owner = s.owner and now - self.owners.get(s.owner, now) > self.config.owner_ttl_s
                if now - s.last_used > self.config.lease_timeout_s or stale_owner:
                    self._end(s.id, "lease expired")
                    self.expired_total += 1
                    EXPIRED.inc()

    # ------------------------------------------------------------------ RPCs

    async def _answer(self, context, call):
        try:
            return await call()
        except SimError as exc:
            await context.abort(exc.code, str(exc))

    async def ListTasks(self, request, context):
        async def call():
            if not 0 <= request.page_size <= 1000:
                raise SimError(grpc.StatusCode.INVALID_ARGUMENT, "page_size: must be in [0, 1000]")
            token = request.page_token
            if token and not (token.isdigit() and len(token) < 10):
                raise SimError(grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token this service issued")
            specs = [t for t in self.tasks.values() if not request.source or t.source == request.source]
            start, size = int(token or 0), request.page_size or 1000
            more = start + size < len(specs)
            return env_pb2.ListTasksResponse(tasks=specs[start:start + size],
                                             next_page_token=str(start + size) if more else "")
        return await self._answer(context, call)

    async def Allocate(self, request, context):
        async def call():
            c = self.config
            if request.HasField("web_task"):
                raise SimError(grpc.StatusCode.INVALID_ARGUMENT, "web_task: the simulator serves only sim/ tasks")
            task = self.tasks.get(request.task)
            if task is None:
                raise SimError(grpc.StatusCode.NOT_FOUND,
                               f"task {request.task[:200]!r} is not served here (ListTasks shows what is)")
            if request.HasField("viewport") and (request.viewport.width, request.viewport.height) != (
                    c.screenshot_width, c.screenshot_height):
                raise SimError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"viewport: the simulator serves only {c.screenshot_width}x{c.screenshot_height}")
            if request.screenshot.format == env_pb2.IMAGE_FORMAT_PNG:
                raise SimError(grpc.StatusCode.INVALID_ARGUMENT, "screenshot.format: the simulator serves JPEG only")
            if len(request.job_id) > 64 or not all(ch.isalnum() or ch in "-_" for ch in request.job_id):
                raise SimError(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must match [A-Za-z0-9_-]{0,64}")
            self._check_owner(request.owner)
            if request.owner:
                self.owners[request.owner] = time.monotonic()
            if len(self.sessions) + self.reserved >= c.max_sessions:
                ALLOCATIONS.labels("exhausted").inc()
                raise SimError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"all {c.max_sessions} slots are busy")
            success = self.episode_rng.random() < c.success_rate
            runaway = not success and self.episode_rng.random() < c.failure_runaway_fraction
            length = 0 if runaway else geometric(
                self.episode_rng, c.success_steps_mean if success else c.failure_steps_mean)
            session = Session(id=uuid.uuid4().hex, task=task, job_id=request.job_id, owner=request.owner,
                              success=success, length=length, last_used=time.monotonic())
            self.reserved += 1
            try:
                await asyncio.sleep(self._latency(c.allocate_median_s, c.allocate_p90_s))
                observation, _ = await self._observe(session)
            except BaseException:
                ALLOCATIONS.labels("fault").inc()
                raise
            finally:
                self.reserved -= 1
            session.last_used = time.monotonic()
            self.sessions[session.id] = session
            SESSIONS.set(len(self.sessions))
            ALLOCATIONS.labels("ok").inc()
            return env_pb2.AllocateResponse(
                session_id=session.id, observation=observation, task=task,
                viewport=env_pb2.Viewport(width=c.screenshot_width, height=c.screenshot_height),
                lease_timeout_s=c.lease_timeout_s)
        return await self._answer(context, call)

    async def Step(self, request, context):
        async def call():
            if not request.HasField("action") or request.action.WhichOneof("kind") is None:
                raise SimError(grpc.StatusCode.INVALID_ARGUMENT, "action: is required (one of its kinds)")
            session = self._lookup(request.session_id)
            async with session.lock:
                self._lookup(request.session_id)  # ended while we waited for the lock
                if session.done:
                    raise SimError(grpc.StatusCode.FAILED_PRECONDITION, f"session {session.id}: the episode is over; "
                                   "Release it and Allocate a new one")
                session.last_used = time.monotonic()
                started = time.perf_counter()
                await asyncio.sleep(self._latency(self.config.step_median_s, self.config.step_p90_s))
                self._lookup(request.session_id)  # released or expired during the action
                if self.config.crash_rate and self.rng.random() < self.config.crash_rate:
                    self._end(session.id, CRASH)
                    self.faults_total += 1
                    CRASHES.inc()
                    raise SimError(grpc.StatusCode.ABORTED, CRASH)
                session.step_index += 1
                observation, changed = await self._observe(session)
                done = session.length > 0 and session.step_index >= session.length
                reward = 1.0 if done and session.success else 0.0
                session.done = done
                session.last_used = time.monotonic()
            self.steps_total += 1
            STEPS.inc()
            if done:
                EPISODES.labels("success" if session.success else "failure").inc()
            info = env_pb2.StepInfo(action_type=request.action.WhichOneof("kind"), page_changed=changed,
                                    duration_s=time.perf_counter() - started,
                                    reward_reason="simulated " + ("success" if reward else "step"))
            return env_pb2.StepResponse(observation=observation, reward=reward, done=done, info=info)
        return await self._answer(context, call)

    async def Release(self, request, context):
        async def call():
            self._check_id(request.session_id)
            released = request.session_id in self.sessions
            self._end(request.session_id, "released")
            return env_pb2.ReleaseResponse(released=released)
        return await self._answer(context, call)

    async def Renew(self, request, context):
        async def call():
            self._check_owner(request.owner)
            if not request.owner:
                return env_pb2.RenewResponse(sessions=0, owner_ttl_s=self.config.owner_ttl_s)
            self.owners[request.owner] = time.monotonic()
            held = sum(1 for s in self.sessions.values() if s.owner == request.owner)
            return env_pb2.RenewResponse(sessions=held, owner_ttl_s=self.config.owner_ttl_s)
        return await self._answer(context, call)

    async def Oracle(self, request, context):
        async def call():
            session = self._lookup(request.session_id)
            if session.done:
                raise SimError(grpc.StatusCode.FAILED_PRECONDITION, f"session {session.id}: the episode is over")
            return env_pb2.OracleResponse(available=False, reason="the simulator has no reference agent")
        return await self._answer(context, call)

    async def Stats(self, request, context):
        c = self.config
        return env_pb2.StatsResponse(
            slots_total=c.max_sessions, slots_free=max(0, c.max_sessions - len(self.sessions) - self.reserved),
            sessions=len(self.sessions), steps_total=self.steps_total, env_faults=self.faults_total,
            expired_leases=self.expired_total)


async def serve(config: SimEnvConfig) -> None:
    blobs = BufferBlobs(config.buffer_target, config.auth_token, config.max_message_bytes, config.buffer_timeout_s)
    await blobs.start()
    t = time.perf_counter()
    sim = SimEnv(config, blobs)
    sizes = [len(p) for p in sim.pool]
    log.info("screenshot pool ready", extra={"images": len(sizes), "mean_kib": sum(sizes) / len(sizes) / 1024,
                                             "seconds": round(time.perf_counter() - t, 2)})
    reaper = asyncio.create_task(sim.reap(), name="reaper")
    runner = ServiceRunner(config, [env_pb2.DESCRIPTOR.services_by_name["EnvService"].full_name],
                           ready=lambda: blobs.up)

    async def on_stop() -> None:
        reaper.cancel()
        await asyncio.gather(reaper, return_exceptions=True)
        await blobs.close()

    await run_service(runner, lambda server: env_pb2_grpc.add_EnvServiceServicer_to_server(sim, server), on_stop)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(SimEnvConfig, argv, prog="python bench/sim_env.py")
    setup_logging("sim_env", config.log_level, config.log_format)
    log.info("starting (FAKE envfleet)", extra={"config": redacted(config)})
    try:
        asyncio.run(serve(config))
    except OSError as exc:  # a port taken: ServiceProcess looks for "cannot bind" and retries
        log.error("cannot start: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
