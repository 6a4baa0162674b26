"""Small helpers the test packages share."""

from __future__ import annotations

import contextlib
import time


def wait_until(predicate, timeout: float = 120.0, what: str = "condition", interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not met in {timeout}s")


@contextlib.asynccontextmanager
async def fake_http_server(routes):
    """A loopback aiohttp server for what cannot run here (a FAKE: say so in the test that uses it).
    ``routes``: (method, path, handler) tuples. Yields the base URL."""
    from aiohttp import web

    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()
