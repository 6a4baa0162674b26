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


def start_envfleet_and_buffer(redis_server, prefix: str, token: str, logs, chromium_path: str,
                              envfleet_args: tuple[str, ...] = ()):
    """A buffer on ``redis_server`` and envfleet (one Chromium, 4 contexts, MiniWoB) storing its screenshots
    through that buffer (no Redis of its own), both ready.
    ``envfleet_args``: more envfleet flags (e.g. --resolve-host-map).
    Returns (envfleet, buffer, env, common flags) for the services a test starts next to them."""
    from asyncwebrl.common.localstack import ServiceProcess

    env = {"ASYNCWEBRL_AUTH_TOKEN": token, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password}
    common = ["--redis-url", redis_server.url, "--key-prefix", prefix, "--log-format", "text"]
    buffer = ServiceProcess("buffer", [*common, "--blob-release-grace-s", "0"], env, logs / "buffer.log")
    buffer.wait_ready()
    envfleet = ServiceProcess("envfleet", ["--buffer-target", buffer.target, "--log-format", "text", "--browsers", "1",
                                           "--contexts-per-browser", "4", "--task-sources", "miniwob",
                                           "--chromium-path", chromium_path, *envfleet_args],
                              {"ASYNCWEBRL_AUTH_TOKEN": token}, logs / "envfleet.log")
    envfleet.wait_ready()
    return envfleet, buffer, env, common
