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

from urllib.parse import urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

from asyncwebrl.common import webgym
from asyncwebrl.envfleet import metrics, oracle, security
from asyncwebrl.envfleet.act import act
from asyncwebrl.envfleet.actions import check
from asyncwebrl.envfleet.blobs import BufferBlobs
from asyncwebrl.envfleet.config import EnvfleetConfig
from asyncwebrl.envfleet.errors import EnvFault, EpisodeOver, Exhausted, InvalidArgument, NotFound, SiteUnreachable
from asyncwebrl.envfleet.observe import Observer
from asyncwebrl.envfleet.pool import Lease, Pool, Session
from asyncwebrl.envfleet.tasks import WEB_SOURCE, TaskSource, TaskSpec, WebTaskSource
from asyncwebrl.v1 import env_pb2

log = logging.getLogger(__name__)


def _unreachable_kind(exc: BaseException, text: str) -> str:
    if isinstance(exc, (PlaywrightTimeout, asyncio.TimeoutError)) or "ERR_TIMED_OUT" in text:
        return "timeout"
    if "ERR_BLOCKED_BY_CLIENT" in text:
        return "blocked"  # the start page redirects off the task's origins: the host policy stopped it
    if "ERR_NAME_NOT_RESOLVED" in text or "ERR_NAME_RESOLUTION_FAILED" in text:
        return "dns"
    if "ERR_CONNECTION_REFUSED" in text or "ERR_CONNECTION_RESET" in text or "ERR_ADDRESS_UNREACHABLE" in text:
        return "refused"
    return "other"


class Fleet:
    def __init__(self, config: EnvfleetConfig, blobs: BufferBlobs, sources: list[TaskSource]) -> None:
        self.config = config
        self.host_map = config.host_map
        # Live-website tasks arrive inline in Allocate (web_task); this source is always there and lists nothing.
        self.web_source = WebTaskSource()
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
        if request.HasField("web_task"):
            spec, source = self._web_task(request)
        elif request.task not in self.tasks:
            raise NotFound(f"task {request.task[:200]!r} is not served here (ListTasks shows what is)")
        else:
            spec, source = self.tasks[request.task]
        width, height = self._viewport(request, spec)
        fmt, quality = self._screenshot_options(request)
        if len(request.job_id) > 64 or not all(c.isalnum() or c in "-_" for c in request.job_id):
            raise InvalidArgument("job_id", "must match [A-Za-z0-9_-]{0,64}")
        self.renew(request.owner)
        if source.live:
            await self._resolve_web_task(spec)
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
                await self._load(lease.page, source, source.url(spec, request.seed, session.episode))
            instruction = await source.begin(lease.page, spec, request.seed, session.episode)
            session.instruction = str(instruction or "")[:4096]
            observation = await self.observer.observe(session)
        except BaseException as exc:
            # Whatever went wrong, the context, the slot and the episode state must come back.
            if session is not None:
                source.close_episode(session.episode)
            self.pool.abandon(host, lease)
            if isinstance(exc, SiteUnreachable):
                metrics.ALLOCATIONS.labels("unreachable").inc()
                metrics.SITE_UNREACHABLE.labels(exc.kind).inc()
                log.warning("site unreachable", extra={"task": spec.name, "url": exc.url[:300], "kind": exc.kind})
                raise
            metrics.ALLOCATIONS.labels("fault").inc()
            if isinstance(exc, (PlaywrightError, asyncio.TimeoutError)):
                first_line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise EnvFault(f"environment fault: could not load {spec.name}: {first_line}") from exc
            raise
        self.pool.admit(session, warm)
        metrics.ALLOCATIONS.labels("ok").inc()
        metrics.ALLOCATE_SECONDS.observe(time.perf_counter() - started)
        return session, observation

    # ------------------------------------------------------------------ live-website tasks

    def _web_task(self, request: env_pb2.AllocateRequest) -> tuple[TaskSpec, TaskSource]:
        """The inline WebTask checked field by field (it is outside input) as a TaskSpec of the webgym source."""
        task = request.web_task
        host_map = self.host_map
        if not 1 <= len(task.task_id) <= webgym.MAX_TASK_ID_CHARS or not all(
            c.isprintable() and not c.isspace() for c in task.task_id
        ):
            raise InvalidArgument("web_task.task_id", f"must be 1-{webgym.MAX_TASK_ID_CHARS} printable characters "
                                                      "without whitespace")
        name = f"{WEB_SOURCE}/{task.task_id}"
        if request.task not in ("", name):
            raise InvalidArgument("task", f"must be empty or {name[:220]!r} when web_task is set")
        if not task.instruction.strip() or len(task.instruction) > webgym.MAX_TASK_NAME:
            raise InvalidArgument("web_task.instruction", f"must be 1-{webgym.MAX_TASK_NAME} characters, not blank")
        if "\x00" in task.instruction:
            raise InvalidArgument("web_task.instruction", "must not contain NUL")
        problem = security.check_web_url(task.start_url, origin_only=False, max_chars=webgym.MAX_URL_CHARS,
                                         host_map=host_map)
        if problem is not None:
            raise InvalidArgument("web_task.start_url", problem)
        if len(task.allowed_origins) > webgym.MAX_ORIGINS:
            raise InvalidArgument("web_task.allowed_origins", f"at most {webgym.MAX_ORIGINS} origins, "
                                                              f"got {len(task.allowed_origins)}")
        origins = []
        for i, url in enumerate(task.allowed_origins):
            problem = security.check_web_url(url, origin_only=True, max_chars=webgym.MAX_URL_CHARS, host_map=host_map)
            if problem is not None:
                raise InvalidArgument(f"web_task.allowed_origins[{i}]", problem)
            origins.append(security.origin_of(url))
        spec = TaskSpec(name, WEB_SOURCE, task.start_url, difficulty="", viewport=(1280, 720),
                        description=task.instruction[:512], origins=tuple(origins), instruction=task.instruction)
        return spec, self.web_source

    async def _resolve_web_task(self, spec: TaskSpec) -> None:
        """Every host of the task resolves to public addresses only (or is mapped); the start host resolves."""
        timeout_s = self.config.navigation_timeout_ms / 1000
        hosts = [("web_task.start_url", spec.url_path)]
        hosts += [(f"web_task.allowed_origins[{i}]", o) for i, o in enumerate(spec.origins)]
        for field, url in hosts:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            try:
                await security.resolve_public(host, port, timeout_s, self.host_map)
            except ValueError as exc:
                raise InvalidArgument(field, str(exc)) from None
            except security.SiteUnresolved as exc:
                if field != "web_task.start_url":
                    continue  # an extra origin that does not resolve is only unreachable, not dangerous
                metrics.ALLOCATIONS.labels("unreachable").inc()
                metrics.SITE_UNREACHABLE.labels("dns").inc()
                log.warning("site unreachable", extra={"task": spec.name, "url": url[:300], "kind": "dns"})
                raise SiteUnreachable(url, "dns", str(exc)) from None

    async def _load(self, page, source: TaskSource, url: str) -> None:
        """Open the task's first page; for a live site, a load that fails is SiteUnreachable."""
        if not source.live:
            await page.goto(url, wait_until=source.wait_until)
            return
        try:
            response = await page.goto(url, wait_until=source.wait_until)
        except (PlaywrightError, asyncio.TimeoutError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SiteUnreachable(url, _unreachable_kind(exc, text), text) from exc
        if response is not None and response.status >= 500:
            raise SiteUnreachable(url, "http_5xx", f"HTTP {response.status} on the start page")

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
