"""Sites "on the web" for live-website tests: aiohttp servers on loopback under names (shop.test, cdn.test,
evil.test) that only envfleet's --resolve-host-map lets Chromium reach there, in a thread with its own loop;
each records every path it is asked for, so "never fetched" is read from a site's own log."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from asyncwebrl.common.localstack import free_port

NAMES = ("shop", "cdn", "evil")


def start_web_envfleet(buffer, run_dir, *extra_hosts: str):
    """envfleet (one Chromium, two contexts) that resolves the sites' names, and ``extra_hosts``, to loopback."""
    from tests.envfleet.conftest import start_envfleet

    hosts = ",".join(f"{name}.test=127.0.0.1" for name in (*NAMES, *extra_hosts))
    return start_envfleet(run_dir, buffer, "--browsers", "1", "--contexts-per-browser", "2",
                          "--task-sources", "miniwob", "--navigation-timeout-ms", "8000", "--resolve-host-map", hosts)


class LoopbackSites:
    """Subclasses give each site its routes (``routes``); ``url``/``origin`` name them as Chromium sees them."""

    def __init__(self) -> None:
        self.hits: dict[str, list[str]] = {name: [] for name in NAMES}
        self.ports = {name: free_port() for name in NAMES}
        self.loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def url(self, name: str, path: str = "/") -> str:
        return f"{self.origin(name)}{path}"

    def origin(self, name: str) -> str:
        return f"http://{name}.test:{self.ports[name]}"

    def clear(self) -> None:
        for log in self.hits.values():
            log.clear()

    def routes(self) -> dict[str, list]:
        raise NotImplementedError

    def _app(self, name: str, routes: list) -> web.Application:
        @web.middleware
        async def record(request, handler):
            self.hits[name].append(request.path)
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.router.add_routes(routes)
        return app

    async def _start(self) -> None:
        for name, routes in self.routes().items():
            runner = web.AppRunner(self._app(name, routes), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.ports[name]).start()
            self._runners.append(runner)

    def stop(self) -> None:
        async def cleanup():
            for r in self._runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
