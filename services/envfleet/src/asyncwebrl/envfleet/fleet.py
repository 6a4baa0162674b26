"""The browser fleet: Chromium processes, leased contexts, and the episode loop.

A replica runs ``browsers`` Chromium processes with at most
``contexts_per_browser`` leased contexts each; a session is one fresh context
for one episode. Slots are reserved synchronously before any await, so a full
fleet answers at once. A Chromium that dies is replaced; its sessions become
environment faults (the caller voids the episode) and their slots come back
with the new process.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import re
import time
import uuid
from typing import Any

import psutil
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright
from redis.exceptions import RedisError

from asyncwebrl.common.blobstore import BlobBudgetExceeded, BlobRef, BlobStore
from asyncwebrl.common.keys import DEFAULT_JOB
from asyncwebrl.envfleet import metrics, oracle, security
from asyncwebrl.envfleet.actions import Checked, check
from asyncwebrl.envfleet.config import CHROMIUM_FLAGS, EnvfleetConfig
from asyncwebrl.envfleet.errors import (
    EnvError,
    EnvFault,
    EpisodeOver,
    Exhausted,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from asyncwebrl.envfleet.tasks import TaskSource, TaskSpec
from asyncwebrl.v1 import env_pb2

log = logging.getLogger(__name__)

# Playwright's words for "the page navigated under this call".
_NAVIGATING = re.compile(r"context was destroyed|navigat|Unable to capture screenshot", re.I)
_SESSION_ID_CHARS = frozenset("0123456789abcdef")
# Remember this many ended sessions so a late Step gets the right status.
_TOMBSTONES = 10_000

_ELEMENTS_JS = """(limit) => {
  const out = [];
  const sel = 'a,button,input,select,textarea,label,[role],[onclick],[tabindex],span,td,li,h1,h2,h3,p';
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0 || r.bottom < 0 || r.right < 0
        || r.top > innerHeight || r.left > innerWidth) continue;
    const text = (el.value !== undefined && el.tagName === 'INPUT' ? el.value : el.innerText || '')
      .replace(/\\s+/g, ' ').trim().slice(0, 200);
    out.push([el.tagName.toLowerCase(), el.id || '', text,
              el.getAttribute('type') || el.getAttribute('role') || '', r.x, r.y, r.width, r.height]);
    if (out.length >= limit) break;
  }
  return out;
}"""


@dataclasses.dataclass(eq=False)
class Browser:
    index: int
    browser: object
    pid: int
    generation: int
    contexts: int = 0
    connected: bool = True
    # Released contexts kept for an in-page reset (warm_reset), oldest first.
    parked: list[Lease] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class Lease:
    """A browser context and its page. It outlives a session when warm reset parks it,
    so page event handlers find the current session here rather than capturing one."""

    context: Any
    page: Any
    task: str = ""  # whose host policy is installed; "" until the first Allocate
    session: Session | None = None
    crashed: bool = False


@dataclasses.dataclass(eq=False)
class Session:
    id: str
    task: TaskSpec
    source: TaskSource
    seed: int
    host: Browser
    lease: Lease
    episode: Any  # the source's server-side state for this episode, if it keeps any
    width: int
    height: int
    image_format: str
    quality: int
    include_elements: bool
    instruction: str
    job_id: str
    owner: str = ""
    step_index: int = 0
    done: bool = False
    last_used: float = dataclasses.field(default_factory=time.monotonic)
    last_sha: str = ""
    navigations: int = 0
    blocked: int = 0
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def page(self) -> Any:
        return self.lease.page


_OWNER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def _check_owner(owner: str) -> None:
    if len(owner) > 128 or not set(owner) <= _OWNER_CHARS:
        raise InvalidArgument("owner", "must match [A-Za-z0-9_.:-]{0,128}")


def _check_session_id(session_id: str) -> None:
    if len(session_id) != 32 or not set(session_id) <= _SESSION_ID_CHARS:
        raise InvalidArgument("session_id", "must be the 32-character id Allocate returned")


def _find_pid(marker: str) -> int:
    """The browser (not renderer) process launched with our marker flag."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if marker in cmd and not any(a.startswith("--type=") for a in cmd):
            return proc.info["pid"]
    return 0


class Fleet:
    def __init__(self, config: EnvfleetConfig, blobs: BlobStore, sources: list[TaskSource]) -> None:
        self.config = config
        self.blobs = blobs
        self.sources = sources
        self.tasks: dict[str, tuple[TaskSpec, TaskSource]] = {}
        self.browsers: list[Browser | None] = [None] * config.browsers
        self.sessions: dict[str, Session] = {}
        self.owners: dict[str, float] = {}  # owner -> when it last allocated or renewed (monotonic)
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._pw = None
        self._stopping = False
        self._background: set[asyncio.Task] = set()
        self.restarts = 0
        self.blocked_total = 0
        self.steps_total = 0
        self.faults_total = 0
        self.expired_total = 0
        self.warm_resets = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for source in self.sources:
            await source.start()
            for spec in source.tasks():
                self.tasks[spec.name] = (spec, source)
        self._pw = await async_playwright().start()
        await asyncio.gather(*(self._launch(i) for i in range(self.config.browsers)))
        self._spawn(self._reap_forever())
        self._update_gauges()
        log.info("fleet ready", extra={"tasks": len(self.tasks), "slots": self.config.slots})

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._background):
            task.cancel()
        for session_id in list(self.sessions):
            await self.release(session_id)
        for host in self.browsers:
            if host is not None and host.connected:
                host.connected = False
                try:
                    await host.browser.close()
                except PlaywrightError:
                    pass
        if self._pw is not None:
            await self._pw.stop()
        for source in self.sources:
            await source.stop()

    def ready(self) -> bool:
        return not self._stopping and any(h is not None and h.connected for h in self.browsers)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _launch(self, index: int) -> None:
        generation = (self.browsers[index].generation + 1) if self.browsers[index] else 0
        marker = f"--asyncwebrl-browser={os.getpid()}-{index}-{generation}"
        browser = await self._pw.chromium.launch(
            executable_path=self.config.chromium_path,
            headless=True,
            args=[*CHROMIUM_FLAGS, *self.config.chromium_extra_flags, marker],
            timeout=30_000,
        )
        host = Browser(index, browser, _find_pid(marker), generation)
        browser.on("disconnected", lambda _b: self._on_disconnected(host))
        self.browsers[index] = host
        log.info("browser launched", extra={"index": index, "pid": host.pid, "generation": generation})

    def _on_disconnected(self, host: Browser) -> None:
        if not host.connected:
            return  # closed by us
        host.connected = False
        victims = [s for s in self.sessions.values() if s.host is host]
        for s in victims:
            self._end(s.id, "environment fault: the browser crashed; the episode is void")
        if victims:
            metrics.ENV_FAULTS.labels("browser_crash").inc(len(victims))
            self.faults_total += len(victims)
        log.warning("browser lost", extra={"index": host.index, "pid": host.pid, "sessions": len(victims)})
        self._update_gauges()
        if not self._stopping:
            self._spawn(self._relaunch(host.index))

    async def _relaunch(self, index: int) -> None:
        delay = 0.25
        while not self._stopping:
            try:
                await self._launch(index)
                self.restarts += 1
                metrics.BROWSER_RESTARTS.inc()
                self._update_gauges()
                return
            except PlaywrightError:
                log.exception("browser relaunch failed", extra={"index": index, "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------------ bookkeeping

    def _end(self, session_id: str, why: str) -> Session | None:
        """Forget a session, free its slot, and remember why it ended."""
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self._ended[session_id] = why
            session.source.close_episode(session.episode)
        while len(self._ended) > _TOMBSTONES:
            self._ended.popitem(last=False)
        if session is not None and session.host.connected:
            session.host.contexts -= 1
        self._update_gauges()
        return session

    def _update_gauges(self) -> None:
        free = self.free_slots()
        metrics.SESSIONS.set(len(self.sessions))
        metrics.SLOTS.labels("free").set(free)
        metrics.SLOTS.labels("busy").set(len(self.sessions))
        metrics.BROWSERS.set(sum(1 for h in self.browsers if h is not None and h.connected))

    def free_slots(self) -> int:
        return sum(
            self.config.contexts_per_browser - h.contexts for h in self.browsers if h is not None and h.connected
        )

    def _reserve(self, task: str) -> Browser | None:
        hosts = [h for h in self.browsers if h is not None and h.connected and h.contexts < self.config.contexts_per_browser]
        if not hosts:
            return None
        # Least loaded, but a browser holding a parked context for this task first.
        host = min(hosts, key=lambda h: (not any(lz.task == task for lz in h.parked), h.contexts))
        host.contexts += 1
        return host

    def _lookup(self, session_id: str) -> Session:
        _check_session_id(session_id)
        session = self.sessions.get(session_id)
        if session is not None:
            return session
        why = self._ended.get(session_id)
        if why and why.startswith("environment fault"):
            raise EnvFault(why)
        raise NotFound(f"session {session_id}: {why or 'unknown session'}")

    def _on_block(self, session: Session | None, reason: str, url: str) -> None:
        self.blocked_total += 1
        metrics.BLOCKED.labels(reason).inc()
        if session is not None:
            session.blocked += 1
        log.info("blocked", extra={"reason": reason, "url": url[:200], "session": session.id if session else ""})

    def renew(self, owner: str) -> int:
        """The owner is alive; returns the leases it holds."""
        _check_owner(owner)
        if owner:
            self.owners[owner] = time.monotonic()
        return sum(1 for s in self.sessions.values() if s.owner == owner) if owner else 0

    async def _reap_forever(self) -> None:
        period = max(0.5, min(5.0, self.config.lease_timeout_s / 4, self.config.owner_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            deadline = now - self.config.lease_timeout_s
            gone = {o for o, seen in self.owners.items() if seen < now - self.config.owner_ttl_s}
            for s in list(self.sessions.values()):
                if s.owner in gone:
                    # Its gateway stopped renewing: no one will Step or Release it. Its lock may be held
                    # by a Step still running for the dead caller; the session ends all the same.
                    metrics.OWNER_LOST.inc()
                    ended = self._end(s.id, "owner gone")
                elif s.last_used < deadline and not s.lock.locked():
                    self.expired_total += 1
                    metrics.EXPIRED.inc()
                    ended = self._end(s.id, "lease expired")
                else:
                    continue
                if ended is not None:
                    await self._close(ended)
            for owner in gone:
                if not any(s.owner == owner for s in self.sessions.values()):
                    self.owners.pop(owner, None)

    async def _close(self, session: Session) -> None:
        try:
            await asyncio.wait_for(session.lease.context.close(), timeout=self.config.action_timeout_ms / 1000)
        except (PlaywrightError, asyncio.TimeoutError):
            pass

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
        host = self._reserve(spec.name)
        if host is None:
            metrics.ALLOCATIONS.labels("exhausted").inc()
            raise Exhausted(f"all {self.config.slots} slots are busy")
        started = time.perf_counter()
        lease: Lease | None = None
        session: Session | None = None
        try:
            lease = self._take_parked(host, spec, source)
            warm = lease is not None
            if lease is None:
                lease = await self._new_lease(host, width, height)
                policy = security.HostPolicy(source.allowed_origins(spec))
                await security.install(lease.context, policy, lambda r, u, lz=lease: self._on_block(lz.session, r, u))
                lease.task = spec.name
            if lease.page.viewport_size != {"width": width, "height": height}:  # a parked page
                await lease.page.set_viewport_size({"width": width, "height": height})
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
            observation = await self._observe(session)
        except BaseException as exc:
            # Whatever went wrong, the context, the slot and the episode state must come back.
            if session is not None:
                source.close_episode(session.episode)
            if lease is not None:
                self._spawn(self._close_quietly(lease.context))
            if host.connected:
                host.contexts -= 1
            self._update_gauges()
            metrics.ALLOCATIONS.labels("fault").inc()
            if isinstance(exc, (PlaywrightError, asyncio.TimeoutError)):
                first_line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise EnvFault(f"environment fault: could not load {spec.name}: {first_line}") from exc
            raise
        if warm:
            self.warm_resets += 1
            metrics.WARM_RESETS.inc()
        self.sessions[session.id] = session
        self._update_gauges()
        metrics.ALLOCATIONS.labels("ok").inc()
        metrics.ALLOCATE_SECONDS.observe(time.perf_counter() - started)
        return session, observation

    async def _new_lease(self, host: Browser, width: int, height: int) -> Lease:
        context = await host.browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=False, service_workers="block"
        )
        context.set_default_timeout(self.config.action_timeout_ms)
        context.set_default_navigation_timeout(self.config.navigation_timeout_ms)
        try:
            lease = Lease(context, await context.new_page())
        except BaseException:
            self._spawn(self._close_quietly(context))
            raise
        self._watch(lease)
        return lease

    def _take_parked(self, host: Browser, spec: TaskSpec, source: TaskSource) -> Lease | None:
        if not self.config.warm_reset or not source.warm_reset:
            return None
        for i in range(len(host.parked) - 1, -1, -1):
            lease = host.parked[i]
            if lease.task == spec.name and not lease.crashed:
                del host.parked[i]
                return lease
        return None

    def _park(self, session: Session) -> bool:
        """Keep a released context for the next episode of its task, if that is safe."""
        lease, host = session.lease, session.host
        if not (
            self.config.warm_reset
            and session.source.warm_reset
            and host.connected
            and not lease.crashed
            and not lease.page.is_closed()
            # An agent that wandered off the task page leaves state we will not reuse.
            and lease.page.url == session.source.url(session.task, session.seed)
        ):
            return False
        host.parked.append(lease)
        while len(host.parked) > self.config.contexts_per_browser:
            self._spawn(self._close_quietly(host.parked.pop(0).context))
        return True

    async def _close_quietly(self, context) -> None:
        try:
            await context.close()
        except PlaywrightError:
            pass

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

    def _watch(self, lease: Lease) -> None:
        page = lease.page

        def on_popup(popup) -> None:
            if popup is page:
                return
            self._on_block(lease.session, "new_window", popup.url)
            self._spawn(popup.close())

        def on_request(request) -> None:
            # Counted when the request starts, well before the new document commits.
            if lease.session is not None and request.is_navigation_request() and request.frame is page.main_frame:
                lease.session.navigations += 1

        def on_crash(_page) -> None:
            lease.crashed = True
            session = lease.session
            if session is not None and session.id in self.sessions:
                metrics.ENV_FAULTS.labels("page_crash").inc()
                self.faults_total += 1
                self._end(session.id, "environment fault: the page crashed; the episode is void")
                self._spawn(self._close(session))

        lease.context.on("page", on_popup)
        page.on("download", lambda d: self._on_block(lease.session, "download", d.url))
        page.on("request", on_request)
        page.on("crash", on_crash)

    async def step(self, session_id: str, action: env_pb2.Action) -> env_pb2.StepResponse:
        session = self._lookup(session_id)
        checked = check(
            action,
            session.width,
            session.height,
            max_type_chars=self.config.max_type_chars,
            max_wait_ms=self.config.max_wait_ms,
        )
        async with session.lock:
            if session.id not in self.sessions:  # ended while we waited for the lock
                self._lookup(session_id)
            if session.done:
                raise EpisodeOver(f"session {session_id}: the episode is over; Release it and Allocate a new one")
            session.last_used = time.monotonic()
            started = time.perf_counter()
            blocked_before = session.blocked
            info = env_pb2.StepInfo(action_type=checked.kind)
            try:
                await self._act(session, checked, info)
                answer = checked.text if checked.kind == "answer" else None
                outcome, observation = await self._read(session, info, answer)
            except (PlaywrightError, asyncio.TimeoutError) as exc:
                raise self._fault(session, exc) from exc
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

    def _fault(self, session: Session, exc: BaseException) -> EnvError:
        """Turn a browser failure in the middle of a step into a voided episode."""
        why = self._ended.get(session.id)
        if why is not None and not why.startswith("environment fault"):
            return NotFound(f"session {session.id}: {why} during the step")  # e.g. a racing Release
        if why is None:
            why = f"environment fault: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            metrics.ENV_FAULTS.labels("step_error").inc()
            self.faults_total += 1
            self._end(session.id, why)
            self._spawn(self._close(session))
        return EnvFault(why)

    async def _act(self, session: Session, a: Checked, info: env_pb2.StepInfo) -> None:
        page = session.page
        navigations = session.navigations
        try:
            if a.kind == "click":
                await page.mouse.click(a.x, a.y)
            elif a.kind == "double_click":
                await page.mouse.dblclick(a.x, a.y)
            elif a.kind == "type":
                if a.x is not None:
                    await page.mouse.click(a.x, a.y)
                if a.clear:
                    await page.keyboard.press("ControlOrMeta+a")
                    await page.keyboard.press("Backspace")
                if a.text:
                    await page.keyboard.type(a.text)
                if a.enter:
                    await page.keyboard.press("Enter")
            elif a.kind == "press":
                await page.keyboard.press(a.key)
            elif a.kind == "scroll":
                await page.mouse.move(a.x, a.y)
                await page.mouse.wheel(a.dx, a.dy)
                # Wheel scrolling lands asynchronously; two frames later it has.
                await page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            elif a.kind == "go_back":
                await page.go_back(wait_until="load")
            elif a.kind == "navigate":
                reason = security.HostPolicy(session.source.allowed_origins(session.task)).violation(
                    a.url, navigation=True
                )
                if reason is not None:
                    self._on_block(session, reason, a.url)
                    info.blocked = True
                    info.blocked_reason = reason
                else:
                    await page.goto(a.url, wait_until="load")
            elif a.kind == "wait":
                await asyncio.sleep(a.ms / 1000)
            settle = self.config.settle_ms if self.config.settle_ms >= 0 else session.source.settle_ms
            if settle and a.kind in ("click", "double_click", "type", "press"):
                # A submit or a link starts its navigation a few ms after the input event.
                await asyncio.sleep(settle / 1000)
            if session.navigations != navigations and a.kind not in ("go_back", "navigate"):
                await page.wait_for_load_state("load")
        except PlaywrightTimeout as exc:
            info.error = f"timeout: {str(exc).splitlines()[0][:200]}"
        except PlaywrightError as exc:
            if not session.host.connected or page.is_closed() or session.id not in self.sessions:
                raise
            # A failed navigation (blocked redirect, DNS) is the agent's problem, not the fleet's.
            info.error = str(exc).splitlines()[0][:200]

    async def _read(self, session: Session, info: env_pb2.StepInfo, answer: str | None):
        """Outcome and observation; an action may have started a navigation, so a
        read that lands in the old document waits for the new one and tries again."""
        source = session.source
        for attempt in range(3):
            try:
                if source.outcome_script is None:  # the task's state lives on its server
                    observation = await self._observe(session, info)
                    # Read after the screenshot: a submit the page has drawn has reached the server.
                    return source.episode_outcome(session.episode, answer), observation
                # One round trip for the page title and the task's outcome.
                title, raw = await session.page.evaluate(f"() => [document.title, ({source.outcome_script})()]")
                return source.parse_outcome(raw), await self._observe(session, info, title)
            except PlaywrightError as exc:
                if attempt == 2 or not _NAVIGATING.search(str(exc)):
                    raise
                await session.page.wait_for_load_state("load")
        raise AssertionError("unreachable")

    async def _store_screenshot(self, session: Session, shot: bytes) -> BlobRef:
        # Past the blob budget, wait for trained groups to free memory (backpressure)
        # for a bounded time rather than fail the episode at once.
        deadline = time.monotonic() + self.config.blob_wait_s
        delay = 0.05
        while True:
            try:
                return await self.blobs.put(
                    session.job_id or DEFAULT_JOB, shot, f"image/{session.image_format}", session.width, session.height
                )
            except RedisError as exc:
                raise Unavailable(f"blob store unavailable: {exc}") from exc
            except BlobBudgetExceeded as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    metrics.BLOB_BACKPRESSURE.labels("refused").inc()
                    raise Exhausted(str(exc)) from exc
                metrics.BLOB_BACKPRESSURE.labels("waited").inc()
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)

    async def _observe(
        self, session: Session, info: env_pb2.StepInfo | None = None, title: Any = None
    ) -> env_pb2.Observation:
        page = session.page
        kwargs = {"type": session.image_format}
        if session.image_format == "jpeg":
            kwargs["quality"] = session.quality
        shot = await page.screenshot(**kwargs)
        title = str(await page.title() if title is None else title)[:512]
        ref = await self._store_screenshot(session, shot)
        metrics.SCREENSHOT_BYTES.inc(len(shot))
        metrics.SCREENSHOTS.labels(session.image_format).inc()
        observation = env_pb2.Observation(
            screenshot=env_pb2.ScreenshotRef(
                sha256=ref.sha256, width=ref.width, height=ref.height, mime=ref.mime, size_bytes=ref.size_bytes
            ),
            url=page.url[:2048],
            title=title,
            instruction=session.instruction,
            step_index=session.step_index + (info is not None),
        )
        if session.include_elements and self.config.max_elements:
            await self._elements(session, observation)
        if info is not None:
            info.page_changed = ref.sha256 != session.last_sha
            session.step_index += 1
        session.last_sha = ref.sha256
        return observation

    async def _elements(self, session: Session, observation: env_pb2.Observation) -> None:
        raw = await session.page.evaluate(_ELEMENTS_JS, self.config.max_elements or 200)
        # The page runs our script in its own world and could have tampered with it.
        for item in raw[: self.config.max_elements or 200] if isinstance(raw, list) else ():
            try:
                tag, el_id, text, kind, x, y, w, h = item
                observation.elements.add(
                    tag=str(tag)[:32], id=str(el_id)[:128], text=str(text)[:200], type=str(kind)[:32],
                    x=float(x), y=float(y), width=float(w), height=float(h),
                )
            except (TypeError, ValueError):
                continue

    async def oracle(self, session_id: str) -> env_pb2.OracleResponse:
        """The reference agent's next action, planned from the page as it is now."""
        session = self._lookup(session_id)
        async with session.lock:
            if session.id not in self.sessions:
                self._lookup(session_id)
            if session.done:
                raise EpisodeOver(f"session {session_id}: the episode is over")
            session.last_used = time.monotonic()
            observation = env_pb2.Observation(instruction=session.instruction, step_index=session.step_index)
            try:
                await self._elements(session, observation)
            except (PlaywrightError, asyncio.TimeoutError) as exc:
                raise self._fault(session, exc) from exc
        try:
            action = oracle.next_action(session.task.name, session.episode, session.step_index, observation,
                                        session.width, session.height)
        except oracle.NoOracle as exc:
            return env_pb2.OracleResponse(available=False, reason=str(exc)[:300])
        return env_pb2.OracleResponse(available=True, action=action)

    async def release(self, session_id: str) -> bool:
        _check_session_id(session_id)
        session = self._end(session_id, "released")
        if session is None:
            return False
        session.lease.session = None
        if not self._park(session):
            # Closing a context takes a few hundred ms of Chromium's time; the caller need not wait.
            self._spawn(self._close(session))
        return True

    def stats(self) -> env_pb2.StatsResponse:
        out = env_pb2.StatsResponse(
            slots_total=self.config.slots,
            slots_free=self.free_slots(),
            sessions=len(self.sessions),
            browsers=sum(1 for h in self.browsers if h is not None and h.connected),
            browser_restarts=self.restarts,
            blocked_requests=self.blocked_total,
            steps_total=self.steps_total,
            env_faults=self.faults_total,
            expired_leases=self.expired_total,
            warm_resets=self.warm_resets,
        )
        for h in self.browsers:
            if h is not None:
                out.browser.add(
                    index=h.index, pid=h.pid, contexts=h.contexts, connected=h.connected, restarts=h.generation,
                    parked_contexts=len(h.parked),
                )
        return out
