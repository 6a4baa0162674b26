"""The browser pool and its session leases.

A replica runs ``browsers`` Chromium processes with at most
``contexts_per_browser`` leased contexts each; a session is one context for one
episode. Slots are reserved synchronously before any await, so a full pool
answers at once. A Chromium that dies is replaced; its sessions become
environment faults (the caller voids the episode) and their slots come back
with the new process. Sessions belong to an owner that renews them; an owner
that stops renewing, or a session left idle past the lease timeout, is reaped.
A released context may be parked for the next episode of its task (warm reset).

What happens on a leased page (actions, screenshots, rewards) is not here: see
``act``, ``observe`` and ``fleet``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import psutil
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import async_playwright

from asyncwebrl.envfleet import metrics, security
from asyncwebrl.envfleet.config import CHROMIUM_FLAGS, EnvfleetConfig
from asyncwebrl.envfleet.errors import EnvError, EnvFault, InvalidArgument, NotFound
from asyncwebrl.envfleet.tasks import TaskSource, TaskSpec

log = logging.getLogger(__name__)

_SESSION_ID_CHARS = frozenset("0123456789abcdef")
_OWNER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")
# Remember this many ended sessions so a late Step gets the right status.
_TOMBSTONES = 10_000


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


def check_owner(owner: str) -> None:
    if len(owner) > 128 or not set(owner) <= _OWNER_CHARS:
        raise InvalidArgument("owner", "must match [A-Za-z0-9_.:-]{0,128}")


def check_session_id(session_id: str) -> None:
    if len(session_id) != 32 or not set(session_id) <= _SESSION_ID_CHARS:
        raise InvalidArgument("session_id", "must be the 32-character id Allocate returned")


# The only variables Chromium is started with (an allowlist: the envfleet process holds
# ASYNCWEBRL_AUTH_TOKEN, the Redis password and more, and a renderer must find none of it).
# HOME is always a private directory of our own; see chromium_env().
_CHROMIUM_ENV_PASSTHROUGH = (
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR",
    "FONTCONFIG_FILE", "FONTCONFIG_PATH", "XDG_RUNTIME_DIR",
)


def chromium_env(home: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment a Chromium process gets: allowlisted variables of ``environ`` and HOME=``home``.
    Playwright's ``env=`` replaces (does not extend) the browser's environment."""
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in _CHROMIUM_ENV_PASSTHROUGH if k in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = home
    return env


def _find_pid(marker: str) -> int:
    """The browser (not renderer) process launched with our marker flag."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if marker in cmd and not any(a.startswith("--type=") for a in cmd):
            return proc.info["pid"]
    return 0


class Pool:
    """The Chromium processes, the sessions leased from them and their owners."""

    def __init__(self, config: EnvfleetConfig) -> None:
        self.config = config
        self.browsers: list[Browser | None] = [None] * config.browsers
        self.sessions: dict[str, Session] = {}
        self.owners: dict[str, float] = {}  # owner -> when it last allocated or renewed (monotonic)
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._pw = None
        self._stopping = False
        self._background: set[asyncio.Task] = set()
        self.restarts = 0
        self.blocked_total = 0
        self.faults_total = 0
        self.expired_total = 0
        self.warm_resets = 0
        self._chromium_home = ""  # private HOME of the Chromium processes, made in start()

    # ------------------------------------------------------------------ browsers

    async def start(self) -> None:
        self._chromium_home = tempfile.mkdtemp(prefix="asyncwebrl-chromium-home-")
        for name, ip in self.config.host_map.items():
            log.warning(
                "--resolve-host-map: live-website tasks may reach %s at %s (tests and offline mirrors only)", name, ip,
                extra={"host": name, "ip": ip},
            )
        # Playwright's node driver copies os.environ when it starts; it gets none of our settings
        # (the token among them: the config holds what envfleet needs).
        ours = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ASYNCWEBRL_")}
        try:
            self._pw = await async_playwright().start()
        finally:
            os.environ.update(ours)
        await asyncio.gather(*(self._launch(i) for i in range(self.config.browsers)))
        self.spawn(self._reap_forever())
        self.update_gauges()

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
        if self._chromium_home:
            shutil.rmtree(self._chromium_home, ignore_errors=True)

    def ready(self) -> bool:
        return not self._stopping and any(h is not None and h.connected for h in self.browsers)

    def spawn(self, coro) -> None:
        """Run ``coro`` in the background; stop() cancels what is still running."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _resolver_flags(self) -> list[str]:
        host_map = self.config.host_map
        return [f"--host-resolver-rules={security.host_resolver_rules(host_map)}"] if host_map else []

    async def _launch(self, index: int) -> None:
        generation = (self.browsers[index].generation + 1) if self.browsers[index] else 0
        marker = f"--asyncwebrl-browser={os.getpid()}-{index}-{generation}"
        browser = await self._pw.chromium.launch(
            executable_path=self.config.chromium_path,
            headless=True,
            args=[*CHROMIUM_FLAGS, *self.config.chromium_extra_flags, *self._resolver_flags(), marker],
            timeout=30_000,
            env=chromium_env(self._chromium_home),
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
            self.end(s.id, "environment fault: the browser crashed; the episode is void")
        if victims:
            metrics.ENV_FAULTS.labels("browser_crash").inc(len(victims))
            self.faults_total += len(victims)
        log.warning("browser lost", extra={"index": host.index, "pid": host.pid, "sessions": len(victims)})
        self.update_gauges()
        if not self._stopping:
            self.spawn(self._relaunch(host.index))

    async def _relaunch(self, index: int) -> None:
        delay = 0.25
        while not self._stopping:
            try:
                await self._launch(index)
                self.restarts += 1
                metrics.BROWSER_RESTARTS.inc()
                self.update_gauges()
                return
            except PlaywrightError:
                log.exception("browser relaunch failed", extra={"index": index, "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def connected_browsers(self) -> int:
        return sum(1 for h in self.browsers if h is not None and h.connected)

    # ------------------------------------------------------------------ slots and sessions

    def free_slots(self) -> int:
        return sum(
            self.config.contexts_per_browser - h.contexts for h in self.browsers if h is not None and h.connected
        )

    def update_gauges(self) -> None:
        free = self.free_slots()
        metrics.SESSIONS.set(len(self.sessions))
        metrics.SLOTS.labels("free").set(free)
        metrics.SLOTS.labels("busy").set(len(self.sessions))
        metrics.BROWSERS.set(self.connected_browsers())

    def reserve(self, task: str) -> Browser | None:
        """Take a slot for ``task`` at once (no await), or None when every slot is busy."""
        hosts = [h for h in self.browsers if h is not None and h.connected and h.contexts < self.config.contexts_per_browser]
        if not hosts:
            return None
        # Least loaded, but a browser holding a parked context for this task first.
        host = min(hosts, key=lambda h: (not any(lz.task == task for lz in h.parked), h.contexts))
        host.contexts += 1
        return host

    def abandon(self, host: Browser, lease: Lease | None) -> None:
        """An allocation failed: close its context and give its slot back."""
        if lease is not None:
            self.spawn(self._close_quietly(lease.context))
        if host.connected:
            host.contexts -= 1
        self.update_gauges()

    def admit(self, session: Session, warm: bool) -> None:
        """A session whose episode has begun: from now on it can be found, renewed and reaped."""
        if warm:
            self.warm_resets += 1
            metrics.WARM_RESETS.inc()
        self.sessions[session.id] = session
        self.update_gauges()

    def end(self, session_id: str, why: str) -> Session | None:
        """Forget a session, free its slot, and remember why it ended."""
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self._ended[session_id] = why
            session.source.close_episode(session.episode)
        while len(self._ended) > _TOMBSTONES:
            self._ended.popitem(last=False)
        if session is not None and session.host.connected:
            session.host.contexts -= 1
        self.update_gauges()
        return session

    def lookup(self, session_id: str) -> Session:
        check_session_id(session_id)
        session = self.sessions.get(session_id)
        if session is not None:
            return session
        why = self._ended.get(session_id)
        if why and why.startswith("environment fault"):
            raise EnvFault(why)
        raise NotFound(f"session {session_id}: {why or 'unknown session'}")

    def fault(self, session: Session, exc: BaseException) -> EnvError:
        """Turn a browser failure in the middle of a step into a voided episode."""
        why = self._ended.get(session.id)
        if why is not None and not why.startswith("environment fault"):
            return NotFound(f"session {session.id}: {why} during the step")  # e.g. a racing Release
        if why is None:
            why = f"environment fault: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            metrics.ENV_FAULTS.labels("step_error").inc()
            self.faults_total += 1
            self.end(session.id, why)
            self.spawn(self.close(session))
        return EnvFault(why)

    def on_block(self, session: Session | None, reason: str, url: str) -> None:
        self.blocked_total += 1
        metrics.BLOCKED.labels(reason).inc()
        if session is not None:
            session.blocked += 1
        log.info("blocked", extra={"reason": reason, "url": url[:200], "session": session.id if session else ""})

    async def release(self, session_id: str) -> bool:
        check_session_id(session_id)
        session = self.end(session_id, "released")
        if session is None:
            return False
        session.lease.session = None
        if not self._park(session):
            # Closing a context takes a few hundred ms of Chromium's time; the caller need not wait.
            self.spawn(self.close(session))
        return True

    # ------------------------------------------------------------------ owners and expiry

    def renew(self, owner: str) -> int:
        """The owner is alive; returns the leases it holds."""
        check_owner(owner)
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
                    ended = self.end(s.id, "owner gone")
                elif s.last_used < deadline and not s.lock.locked():
                    self.expired_total += 1
                    metrics.EXPIRED.inc()
                    ended = self.end(s.id, "lease expired")
                else:
                    continue
                if ended is not None:
                    await self.close(ended)
            for owner in gone:
                if not any(s.owner == owner for s in self.sessions.values()):
                    self.owners.pop(owner, None)

    # ------------------------------------------------------------------ contexts

    async def lease(
        self, host: Browser, spec: TaskSpec, source: TaskSource, width: int, height: int
    ) -> tuple[Lease, bool]:
        """A context with its page for ``spec`` on ``host``, sized to the viewport: a parked one
        (warm, True) or a new one with the task's host policy installed (False)."""
        lease = self._take_parked(host, spec, source)
        warm = lease is not None
        try:
            if lease is None:
                lease = await self._new_lease(host, width, height)
                policy = security.HostPolicy(source.allowed_origins(spec))
                on_block = lambda r, u, lz=lease: self.on_block(lz.session, r, u)  # noqa: E731
                await security.install(lease.context, policy, on_block)
                if source.live:
                    # A live site may redirect anywhere; envfleet's own sites never leave their origin, and the
                    # guard costs every request a round trip to Python.
                    await security.guard_redirects(lease.context, lease.page, policy, on_block, self.spawn)
                lease.task = spec.name
            if lease.page.viewport_size != {"width": width, "height": height}:  # a parked page
                await lease.page.set_viewport_size({"width": width, "height": height})
        except BaseException:
            if lease is not None:
                self.spawn(self._close_quietly(lease.context))
            raise
        return lease, warm

    async def _new_lease(self, host: Browser, width: int, height: int) -> Lease:
        context = await host.browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=False, service_workers="block"
        )
        context.set_default_timeout(self.config.action_timeout_ms)
        context.set_default_navigation_timeout(self.config.navigation_timeout_ms)
        try:
            lease = Lease(context, await context.new_page())
        except BaseException:
            self.spawn(self._close_quietly(context))
            raise
        self._watch(lease)
        return lease

    def _watch(self, lease: Lease) -> None:
        page = lease.page

        def on_popup(popup) -> None:
            if popup is page:
                return
            self.on_block(lease.session, "new_window", popup.url)
            self.spawn(popup.close())

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
                self.end(session.id, "environment fault: the page crashed; the episode is void")
                self.spawn(self.close(session))

        lease.context.on("page", on_popup)
        page.on("download", lambda d: self.on_block(lease.session, "download", d.url))
        page.on("request", on_request)
        page.on("crash", on_crash)

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
            self.spawn(self._close_quietly(host.parked.pop(0).context))
        return True

    async def close(self, session: Session) -> None:
        try:
            await asyncio.wait_for(session.lease.context.close(), timeout=self.config.action_timeout_ms / 1000)
        except (PlaywrightError, asyncio.TimeoutError):
            pass

    async def _close_quietly(self, context) -> None:
        try:
            await context.close()
        except PlaywrightError:
            pass
