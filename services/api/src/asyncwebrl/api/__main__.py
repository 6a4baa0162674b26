"""``python -m asyncwebrl.api``: the REST api until SIGTERM (health on gRPC and /healthz)."""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from redis.exceptions import RedisError

from asyncwebrl.api.service import create_app
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.k8s import KubernetesLauncher
from asyncwebrl.api.launcher import LocalLauncher
from asyncwebrl.api.store import JobStore
from asyncwebrl.common.grpcserver import ServiceRunner
from asyncwebrl.common.main import service_main
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
    # A SIGTERM between uvicorn's start and this poll has already closed its sockets: then it only drains.
    sockets = [sock for srv in server.servers for sock in srv.sockets] if server.started else []
    if sockets and not server.should_exit:
        log.info("api serving", extra={"api_port": sockets[0].getsockname()[1]})
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
    service_main("api", ApiConfig, serve, argv, errors=(OSError, RedisError))


if __name__ == "__main__":
    main()
