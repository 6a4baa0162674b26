"""The episode loop: tasks, sessions and the EnvService calls behind them.

``Fleet`` serves Allocate, Step, Oracle, Release, Renew and Stats by putting
together the browser pool and its leases (``pool``), acting on a page (``act``)
and observing it (``observe``), over the task sources it was given.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from playwright.async_api import Error as PlaywrightError

from asyncwebrl.envfleet import metrics, oracle
from asyncwebrl.envfleet.act import act
from asyncwebrl.envfleet.actions import check
from asyncwebrl.envfleet.blobs import BufferBlobs
from asyncwebrl.envfleet.config import EnvfleetConfig
from asyncwebrl.envfleet.errors import EnvFault, EpisodeOver, Exhausted, InvalidArgument, NotFound
from asyncwebrl.envfleet.observe import Observer
from asyncwebrl.envfleet.pool import Lease, Pool, Session
from asyncwebrl.envfleet.tasks import TaskSource, TaskSpec
from asyncwebrl.v1 import env_pb2

log = logging.getLogger(__name__)


class Fleet:
    def __init__(self, config: EnvfleetConfig, blobs: BufferBlobs, sources: list[TaskSource]) -> None:
        self.config = config
        self.blobs = blobs
        self.sources = sources
        self.tasks: dict[str, tuple[TaskSpec, TaskSource]] = {}
        self.pool = Pool(config)
        self.observer = Observer(config, blobs)
        self.steps_total = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for source in self.sources:
            await source.start()
            for spec in source.tasks():
                self.tasks[spec.name] = (spec, source)
        await self.pool.start()
        log.info("fleet ready", extra={"tasks": len(self.tasks), "slots": self.config.slots})

    async def stop(self) -> None:
        await self.pool.stop()
        for source in self.sources:
            await source.stop()

    def ready(self) -> bool:
        """Browsers up and the buffer (where screenshots go) answering."""
        return self.pool.ready() and self.blobs.up

    def free_slots(self) -> int:
        return self.pool.free_slots()

    def renew(self, owner: str) -> int:
        """The owner is alive; returns the leases it holds."""
        return self.pool.renew(owner)

    # ------------------------------------------------------------------ API

    def list_tasks(self, source: str = "") -> list[TaskSpec]:
        return [spec for spec, _ in self.tasks.values() if not source or spec.source == source]

    async def allocate(self, request: env_pb2.AllocateRequest) -> tuple[Session, env_pb2.Observation]:
        if request.task not in self.tasks:
            raise NotFound(f"task {request.task[:200]!r} is not served here (ListTasks shows what is)")
        spec, source = self.tasks[request.task]
        width, height = self._viewport(request, spec)
        fmt, quality = self._screenshot_options(request)
        if len(request.job_id) > 64 or not all(c.isalnum() or c in "-_" for c in request.job_id):
            raise InvalidArgument("job_id", "must match [A-Za-z0-9_-]{0,64}")
        self.renew(request.owner)
        host = self.pool.reserve(spec.name)
        if host is None:
            metrics.ALLOCATIONS.labels("exhausted").inc()
            raise Exhausted(f"all {self.config.slots} slots are busy")
        started = time.perf_counter()
        lease: Lease | None = None
        session: Session | None = None
        try:
            lease, warm = await self.pool.lease(host, spec, source, width, height)
            session = Session(
                id=uuid.uuid4().hex,
                task=spec,
                source=source,
                seed=request.seed,
                host=host,
                lease=lease,
                episode=None,
                width=width,
                height=height,
                image_format=fmt,
                quality=quality,
                include_elements=request.include_elements,
                instruction="",
                job_id=request.job_id,
                owner=request.owner,
            )
            lease.session = session
            if not warm:
                session.episode = await source.open_episode(lease.context, spec, request.seed)
                await lease.page.goto(source.url(spec, request.seed, session.episode), wait_until="load")
            instruction = await source.begin(lease.page, spec, request.seed, session.episode)
            session.instruction = str(instruction or "")[:4096]
            observation = await self.observer.observe(session)
        except BaseException as exc:
            # Whatever went wrong, the context, the slot and the episode state must come back.
            if session is not None:
                source.close_episode(session.episode)
            self.pool.abandon(host, lease)
            metrics.ALLOCATIONS.labels("fault").inc()
            if isinstance(exc, (PlaywrightError, asyncio.TimeoutError)):
                first_line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise EnvFault(f"environment fault: could not load {spec.name}: {first_line}") from exc
            raise
        self.pool.admit(session, warm)
        metrics.ALLOCATIONS.labels("ok").inc()
        metrics.ALLOCATE_SECONDS.observe(time.perf_counter() - started)
        return session, observation

    def _viewport(self, request: env_pb2.AllocateRequest, spec: TaskSpec) -> tuple[int, int]:
        if not request.HasField("viewport"):
            return spec.viewport
        limit = self.config.max_viewport
        for axis in ("width", "height"):
            value = getattr(request.viewport, axis)
            if not 64 <= value <= limit:
                raise InvalidArgument(f"viewport.{axis}", f"{value} is outside [64, {limit}]")
        return request.viewport.width, request.viewport.height

    def _screenshot_options(self, request: env_pb2.AllocateRequest) -> tuple[str, int]:
        fmt, quality = self.config.screenshot_format, self.config.screenshot_quality
        options = request.screenshot
        if options.format == env_pb2.IMAGE_FORMAT_JPEG:
            fmt = "jpeg"
        elif options.format == env_pb2.IMAGE_FORMAT_PNG:
            fmt = "png"
        elif options.format != env_pb2.IMAGE_FORMAT_UNSPECIFIED:
            raise InvalidArgument("screenshot.format", f"unknown format {options.format}")
        if options.quality:
            if not 1 <= options.quality <= 100:
                raise InvalidArgument("screenshot.quality", f"{options.quality} is outside [1, 100]")
            quality = options.quality
        return fmt, quality

    async def step(self, session_id: str, action: env_pb2.Action) -> env_pb2.StepResponse:
        session = self.pool.lookup(session_id)
        checked = check(
            action,
            session.width,
            session.height,
            max_type_chars=self.config.max_type_chars,
            max_wait_ms=self.config.max_wait_ms,
        )
        async with session.lock:
            if session.id not in self.pool.sessions:  # ended while we waited for the lock
                self.pool.lookup(session_id)
            if session.done:
                raise EpisodeOver(f"session {session_id}: the episode is over; Release it and Allocate a new one")
            session.last_used = time.monotonic()
            started = time.perf_counter()
            blocked_before = session.blocked
            info = env_pb2.StepInfo(action_type=checked.kind)
            try:
                await act(self.pool, session, checked, info)
                answer = checked.text if checked.kind == "answer" else None
                outcome, observation = await self.observer.read(session, info, answer)
            except (PlaywrightError, asyncio.TimeoutError) as exc:
                raise self.pool.fault(session, exc) from exc
            done = outcome.done or checked.kind == "answer"
            if checked.kind == "answer":
                info.answer = checked.text
            session.done = done
            session.last_used = time.monotonic()
            info.reward_reason = outcome.reason
            info.blocked_requests = session.blocked - blocked_before
            elapsed = time.perf_counter() - started
            info.duration_s = elapsed
        self.steps_total += 1
        metrics.STEPS.labels(checked.kind).inc()
        metrics.STEP_SECONDS.observe(elapsed)
        return env_pb2.StepResponse(observation=observation, reward=outcome.reward, done=done, info=info)

    async def oracle(self, session_id: str) -> env_pb2.OracleResponse:
        """The reference agent's next action, planned from the page as it is now."""
        session = self.pool.lookup(session_id)
        async with session.lock:
            if session.id not in self.pool.sessions:
                self.pool.lookup(session_id)
            if session.done:
                raise EpisodeOver(f"session {session_id}: the episode is over")
            session.last_used = time.monotonic()
            observation = env_pb2.Observation(instruction=session.instruction, step_index=session.step_index)
            try:
                await self.observer.elements(session, observation)
            except (PlaywrightError, asyncio.TimeoutError) as exc:
                raise self.pool.fault(session, exc) from exc
        try:
            action = oracle.next_action(session.task.name, session.episode, session.step_index, observation,
                                        session.width, session.height)
        except oracle.NoOracle as exc:
            return env_pb2.OracleResponse(available=False, reason=str(exc)[:300])
        return env_pb2.OracleResponse(available=True, action=action)

    async def release(self, session_id: str) -> bool:
        return await self.pool.release(session_id)

    def stats(self) -> env_pb2.StatsResponse:
        pool = self.pool
        out = env_pb2.StatsResponse(
            slots_total=self.config.slots,
            slots_free=pool.free_slots(),
            sessions=len(pool.sessions),
            browsers=pool.connected_browsers(),
            browser_restarts=pool.restarts,
            blocked_requests=pool.blocked_total,
            steps_total=self.steps_total,
            env_faults=pool.faults_total,
            expired_leases=pool.expired_total,
            warm_resets=pool.warm_resets,
        )
        for h in pool.browsers:
            if h is not None:
                out.browser.add(
                    index=h.index, pid=h.pid, contexts=h.contexts, connected=h.connected, restarts=h.generation,
                    parked_contexts=len(h.parked),
                )
        return out
