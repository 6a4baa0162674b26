"""One loopback HTTP server for every built-in site, and the task source over it.

Episodes are keyed by a random cookie that envfleet sets in the session's fresh
browser context before the first page loads; the world of an episode lives here,
never in the page, and the reward is computed here from it.
"""

from __future__ import annotations

import pathlib
import random
import secrets
from typing import Any

from aiohttp import web

from asyncwebrl.envfleet.sites.base import Episode, Site, Template, normalise
from asyncwebrl.envfleet.sites.html import esc
from asyncwebrl.envfleet.tasks import Outcome, TaskSource, TaskSpec

COOKIE = "wl_episode"
STATIC = pathlib.Path(__file__).parent / "static"
SOURCE = "webgym-lite"


class SiteServer:
    def __init__(self, sites: list[Site], max_episodes: int = 10_000) -> None:
        self.sites = {s.name: s for s in sites}
        self.templates: dict[str, tuple[Template, Site]] = {}
        for site in sites:
            for template in site.templates:
                if not template.name.startswith(site.name + "/") or template.name in self.templates:
                    raise ValueError(f"template name {template.name!r}: must be unique and start with '{site.name}/'")
                self.templates[template.name] = (template, site)
        self.episodes: dict[str, Episode] = {}
        self.max_episodes = max_episodes
        self._runner: web.AppRunner | None = None
        self.origin = ""

    # ---------------------------------------------------------------- episodes

    def open(self, template_name: str, seed: int) -> Episode:
        if template_name not in self.templates:
            raise KeyError(template_name)
        if len(self.episodes) >= self.max_episodes:
            raise RuntimeError("too many open episodes")
        template, site = self.templates[template_name]
        episode = instantiate(site, template, seed)
        self.episodes[episode.key] = episode
        return episode

    def close(self, key: str) -> None:
        self.episodes.pop(key, None)

    # ---------------------------------------------------------------- HTTP

    def _wrap(self, site: Site, handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            episode = self.episodes.get(request.cookies.get(COOKIE, ""))
            if episode is None or episode.site is not site:
                return web.Response(
                    status=403, content_type="text/html",
                    text=f"<h1>Session expired</h1><p>{esc(site.title)} needs an active task session.</p>",
                )
            return await handler(request, episode)

        return wrapped

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        assets = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.suffix in (".css", ".svg")}

        async def asset(request: web.Request) -> web.Response:
            body = assets.get(request.match_info["name"])
            if body is None:
                raise web.HTTPNotFound()
            kind = "text/css" if request.match_info["name"].endswith(".css") else "image/svg+xml"
            return web.Response(body=body, content_type=kind, headers={"Cache-Control": "max-age=3600"})

        app.router.add_get("/static/{name}", asset)
        for site in self.sites.values():
            for method, path, handler in site.routes():
                app.router.add_route(method, f"/{site.name}{path}", self._wrap(site, handler))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tcp = web.TCPSite(self._runner, "127.0.0.1", 0)
        await tcp.start()
        self.origin = f"http://127.0.0.1:{tcp._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def instantiate(site: Site, template: Template, seed: int) -> Episode:
    """The deterministic episode for (template, seed): the same world, goal and plan everywhere."""
    world = site.world(random.Random(f"{site.name}:{seed}"))
    goal = template.goal(world, random.Random(f"{template.name}:{seed}"))
    return Episode(secrets.token_hex(16), site, template, seed, world, goal)


def outcome_of(episode: Episode, answer: str | None) -> Outcome:
    goal = episode.goal
    if goal.answer is not None:
        if answer is None:
            return Outcome(0.0, False)
        ok = normalise(answer) == normalise(goal.answer)
        return Outcome(1.0 if ok else 0.0, True, "answer matches" if ok else "answer does not match")
    if episode.template.check(episode.world, goal):
        return Outcome(1.0, True, "goal reached")
    if answer is not None:
        return Outcome(0.0, True, "answered a task that needs no answer")
    return Outcome(0.0, False)


class SiteSource(TaskSource):
    """The built-in sites as envfleet tasks: ``webgym-lite/<site>/<template>``."""

    name = SOURCE
    outcome_script = None
    settle_ms = 150  # every form post and link is a page load

    def __init__(self, sites: list[Site] | None = None) -> None:
        if sites is None:
            from asyncwebrl.envfleet.sites import all_sites

            sites = all_sites()
        self.server = SiteServer(sites)

    def tasks(self) -> list[TaskSpec]:
        return [
            TaskSpec(f"{SOURCE}/{t.name}", SOURCE, f"/{s.name}/", difficulty=t.difficulty, viewport=(1280, 720),
                     description=f"{s.title}: {t.name}", held_out=t.ood, optimal_steps=t.optimal_steps)
            for t, s in self.server.templates.values()
        ]

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def allowed_origins(self, task: TaskSpec) -> list[str]:
        return [self.server.origin]

    async def open_episode(self, context: Any, task: TaskSpec, seed: int) -> Episode:
        episode = self.server.open(task.name.split("/", 1)[1], seed)
        await context.add_cookies([{"name": COOKIE, "value": episode.key, "url": self.server.origin}])
        return episode

    def close_episode(self, episode: Any) -> None:
        if episode is not None:
            self.server.close(episode.key)

    def url(self, task: TaskSpec, seed: int, episode: Any = None) -> str:
        if episode is None:
            return f"{self.server.origin}{task.url_path}"
        return f"{self.server.origin}/{episode.site.name}{episode.goal.start}"

    async def begin(self, page: Any, task: TaskSpec, seed: int, episode: Any = None) -> str:
        return episode.goal.instruction if episode is not None else ""

    def parse_outcome(self, raw: Any) -> Outcome:  # pragma: no cover - outcomes are server-side here
        raise NotImplementedError

    def episode_outcome(self, episode: Any, answer: str | None) -> Outcome:
        return outcome_of(episode, answer)
