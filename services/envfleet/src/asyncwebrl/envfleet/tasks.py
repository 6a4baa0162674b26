"""Task sources: what a task is, how an episode starts, and where its reward comes from.

Every source serves its pages from its own HTTP server on loopback, so the
host policy can allow exactly that origin and nothing else.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import pathlib
from typing import Any

from aiohttp import web

from asyncwebrl.envfleet.config import TIMER_OFF_MS


@dataclasses.dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str  # "<source>/<task>"
    source: str
    url_path: str  # path under the source's server
    difficulty: str = "easy"
    viewport: tuple[int, int] = (160, 210)
    description: str = ""
    held_out: bool = False
    optimal_steps: int = 0
    # Live-website tasks (WebTaskSource) only: extra allowed origins and the instruction, from the request.
    origins: tuple[str, ...] = ()
    instruction: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    reward: float
    done: bool
    reason: str = ""


def _reward(value: Any) -> float:
    """Page content is untrusted: only a finite, sane number is a reward."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    value = float(value)
    return value if math.isfinite(value) and abs(value) <= 1e6 else 0.0


class StaticServer:
    """A read-only file server on 127.0.0.1 with a free port."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self._runner: web.AppRunner | None = None
        self.origin = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_static("/", self.root, follow_symlinks=False, show_index=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class TaskSource(abc.ABC):
    name: str
    # begin() on an already loaded task page starts a clean new episode.
    warm_reset: bool = False
    # ms to wait after an input action for a navigation it may start (see EnvfleetConfig.settle_ms).
    settle_ms: int = 50
    # How far Allocate loads the task page (Playwright's wait_until).
    wait_until: str = "load"
    # Pages on the open web (not our loopback servers): a start page that fails to load is UNAVAILABLE
    # (SiteUnreachable), not an environment fault of ours.
    live: bool = False

    @abc.abstractmethod
    def tasks(self) -> list[TaskSpec]: ...

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def url(self, task: TaskSpec, seed: int, episode: Any = None) -> str: ...

    @abc.abstractmethod
    def allowed_origins(self, task: TaskSpec) -> list[str]: ...

    @abc.abstractmethod
    async def begin(self, page: Any, task: TaskSpec, seed: int, episode: Any = None) -> str:
        """Start the episode on a loaded page; return the instruction."""

    # A JS function of no arguments whose result parse_outcome() understands; None for
    # sources that keep the episode's state on their server (episode_outcome()).
    outcome_script: str | None

    @abc.abstractmethod
    def parse_outcome(self, raw: Any) -> Outcome: ...

    async def open_episode(self, context: Any, task: TaskSpec, seed: int) -> Any:
        """Server-side state for one episode, made before its first page loads."""
        return None

    def close_episode(self, episode: Any) -> None:
        """Drop what open_episode made; called however the session ends."""

    def episode_outcome(self, episode: Any, answer: str | None) -> Outcome:
        raise NotImplementedError

    async def outcome(self, page: Any) -> Outcome:
        return self.parse_outcome(await page.evaluate(self.outcome_script))


def _miniwob_html_root() -> pathlib.Path:
    import miniwob

    return pathlib.Path(miniwob.__file__).parent / "html"


# MiniWoB tasks whose pages are flight-booking sites (bigger, need HTTP).
_FLIGHT_TASKS = ("flight.AA", "flight.Alaska", "flight.Alaska-auto")


class MiniWoBSource(TaskSource):
    """Every MiniWoB++ page of the ``miniwob`` wheel, over one loopback HTTP server."""

    name = "miniwob"
    warm_reset = True  # startEpisodeReal() regenerates the problem in place
    settle_ms = 0  # task clicks change the page in place

    def __init__(self, episode_ms: int = 0) -> None:
        self.root = _miniwob_html_root()
        self.server = StaticServer(self.root)
        self.episode_ms = episode_ms or TIMER_OFF_MS
        specs = []
        for page in sorted((self.root / "miniwob").glob("*.html")):
            specs.append(TaskSpec(f"miniwob/{page.stem}", "miniwob", f"miniwob/{page.name}"))
        for flight in _FLIGHT_TASKS:
            path = "flight/" + flight.split(".", 1)[1] + "/wrapper.html"
            if (self.root / path).exists():
                specs.append(TaskSpec(f"miniwob/{flight}", "miniwob", path, viewport=(375, 667)))
        self._tasks = specs

    def tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def url(self, task: TaskSpec, seed: int, episode: Any = None) -> str:
        return f"{self.server.origin}/{task.url_path}"

    def allowed_origins(self, task: TaskSpec) -> list[str]:
        return [self.server.origin]

    async def begin(self, page: Any, task: TaskSpec, seed: int, episode: Any = None) -> str:
        # Pages set their own EPISODE_MAX_TIME at load; ours wins because it runs after.
        return await page.evaluate(
            """([seed, ms]) => {
                core.EPISODE_MAX_TIME = ms;
                Math.seedrandom(seed);
                core.startEpisodeReal();
                return core.getUtterance();
            }""",
            [seed, self.episode_ms],
        )

    outcome_script = "() => [WOB_DONE_GLOBAL, WOB_RAW_REWARD_GLOBAL, WOB_REWARD_REASON]"

    def parse_outcome(self, raw: Any) -> Outcome:
        if not isinstance(raw, list) or len(raw) != 3:
            return Outcome(0.0, False, "unreadable outcome")
        done, reward, reason = raw
        return Outcome(_reward(reward), done is True, "" if reason is None else str(reason)[:200])


class StaticSource(TaskSource):
    """Plain HTML pages from local directories, for custom sites and tests.

    A page reports through globals: ``ASYNCWEBRL_INSTRUCTION`` (or the text of
    ``#instruction``), ``ASYNCWEBRL_REWARD``, ``ASYNCWEBRL_DONE``. The seed
    arrives as the ``seed`` query parameter.
    """

    name = "static"

    def __init__(self, directories: tuple[str, ...]) -> None:
        self.dirs = [pathlib.Path(d).resolve() for d in directories]
        names = [d.name for d in self.dirs]
        if len(set(names)) != len(names):
            raise ValueError("static_task_dirs: directory names must be unique")
        self.servers = {d.name: StaticServer(d) for d in self.dirs}

    def tasks(self) -> list[TaskSpec]:
        specs = []
        for d in self.dirs:
            for page in sorted(d.glob("*.html")):
                specs.append(TaskSpec(f"static/{d.name}/{page.stem}", "static", page.name, viewport=(800, 600)))
        return specs

    async def start(self) -> None:
        for server in self.servers.values():
            await server.start()

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.stop()

    def _server(self, task: TaskSpec) -> StaticServer:
        return self.servers[task.name.split("/")[1]]

    def url(self, task: TaskSpec, seed: int, episode: Any = None) -> str:
        return f"{self._server(task).origin}/{task.url_path}?seed={seed}"

    def allowed_origins(self, task: TaskSpec) -> list[str]:
        return [self._server(task).origin]

    async def begin(self, page: Any, task: TaskSpec, seed: int, episode: Any = None) -> str:
        return await page.evaluate(
            """() => window.ASYNCWEBRL_INSTRUCTION
                || (document.getElementById('instruction') || {}).textContent || ''"""
        )

    outcome_script = "() => JSON.stringify([window.ASYNCWEBRL_REWARD || 0, !!window.ASYNCWEBRL_DONE])"

    def parse_outcome(self, raw: Any) -> Outcome:
        try:
            reward, done = json.loads(raw)
        except (TypeError, ValueError):
            return Outcome(0.0, False, "unreadable outcome")
        return Outcome(_reward(reward), done is True)


WEB_SOURCE = "webgym"


class WebTaskSource(TaskSource):
    """Live-website (WebGym) tasks passed inline in Allocate (``AllocateRequest.web_task``): no server of ours,
    no task list, no reward in the page.

    ``TaskSpec.url_path`` is the start URL; the host policy allows its origin and ``TaskSpec.origins``. The
    episode ends on the agent's answer (or the caller's step limit); the caller's judge decides success, so
    the outcome here is always reward 0 and never done by itself. Every episode gets a fresh context
    (``warm_reset`` False): a live site leaves cookies and storage behind.
    """

    name = WEB_SOURCE
    warm_reset = False
    settle_ms = 150  # live pages navigate on most clicks
    outcome_script = None
    # Allocate loads the start page only to DOMContentLoaded: a live site's load event can wait on trackers.
    wait_until = "domcontentloaded"
    live = True

    def tasks(self) -> list[TaskSpec]:
        return []  # inline tasks only; ListTasks does not list them

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def url(self, task: TaskSpec, seed: int, episode: Any = None) -> str:
        return task.url_path

    def allowed_origins(self, task: TaskSpec) -> list[str]:
        return [task.url_path, *task.origins]

    async def begin(self, page: Any, task: TaskSpec, seed: int, episode: Any = None) -> str:
        return task.instruction

    def parse_outcome(self, raw: Any) -> Outcome:
        return Outcome(0.0, False)

    def episode_outcome(self, episode: Any, answer: str | None) -> Outcome:
        if answer is not None:
            return Outcome(0.0, True, "answered; success is decided by the caller's judge")
        return Outcome(0.0, False)
