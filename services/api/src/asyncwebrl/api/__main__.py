"""``python -m asyncwebrl.api``: the REST api until SIGTERM (health on gRPC and /healthz)."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn
from redis.exceptions import RedisError

from asyncwebrl.api.app import create_app
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.k8s import KubernetesLauncher
from asyncwebrl.api.launcher import LocalLauncher
from asyncwebrl.api.store import JobStore
from asyncwebrl.common.config import parse_config, redacted
from asyncwebrl.common.grpcserver import ServiceRunner
from asyncwebrl.common.logs import setup_logging
from asyncwebrl.common.redisclient import make_redis

log = logging.getLogger("asyncwebrl.api")


async def serve(config: ApiConfig) -> None:
    redis = make_redis(config.redis_url, config.redis_password)
    await redis.ping()
    store = JobStore(redis, config.key_prefix, config.max_jobs)
    launcher = LocalLauncher(config, store) if config.launcher == "local" else None
    if config.launcher == "kubernetes":
        launcher = KubernetesLauncher(config, store)
    app = create_app(config, store, launcher)
    runner = ServiceRunner(config, [])
    runner.build_server()
    runner.install_signal_handlers()
    await runner.start()
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.api_port, log_config=None,
                                           access_log=False, timeout_graceful_shutdown=int(config.shutdown_grace_s)))
    # uvicorn takes SIGTERM while it serves, drains, and raises it again for the runner.
    api = asyncio.create_task(server.serve())
    stop = asyncio.create_task(runner.wait_stopped())
    while not server.started and not api.done():
        await asyncio.sleep(0.05)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        log.info("api serving", extra={"api_port": port})
        if launcher is not None:
            await launcher.resume()
    await asyncio.wait({api, stop}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await api
    stop.cancel()
    if launcher is not None:
        await launcher.close()
    await runner.stop()
    await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    config = parse_config(ApiConfig, argv, prog="python -m asyncwebrl.api")
    setup_logging("api", config.log_level, config.log_format)
    log.info("starting", extra={"config": redacted(config)})
    try:
        asyncio.run(serve(config))
    except (OSError, RedisError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
