"""``python -m asyncwebrl.engine``: serve SGLang's native HTTP API until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from asyncwebrl.common.main import service_main
from asyncwebrl.common.models.loading import load_policy, set_torch_threads
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.common.registry import Heartbeat, Registry
from asyncwebrl.engine import metrics
from asyncwebrl.engine.config import EngineConfig
from asyncwebrl.engine.core import Engine
from asyncwebrl.engine.service import Server

log = logging.getLogger("asyncwebrl.engine")


async def serve(config: EngineConfig) -> None:
    policy = load_policy(config.model_path, device=config.device, dtype=config.dtype)
    engine = Engine(policy, config.weight_version, config.max_batch_size, seed=config.seed)
    engine.start()
    metrics.WEIGHT_VERSION.labels(config.weight_version).set(1)
    server = Server(config, engine)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.http_port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    heartbeat = await _register(config, port, server, engine)
    log.info("serving", extra={"port": port, "model": config.model_path, "family": policy.family,
                               "device": str(engine.device), "weight_version": config.weight_version})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": config.shutdown_grace_s})
    server.stopping = True
    if heartbeat is not None:
        await heartbeat.stop()  # out of rotation before draining
    deadline = loop.time() + config.shutdown_grace_s
    while loop.time() < deadline and any(engine.stats()[k] for k in ("running", "queued")):
        await asyncio.sleep(0.05)
    await asyncio.to_thread(engine.stop)
    await runner.cleanup()


async def _register(config: EngineConfig, port: int, server: Server, engine: Engine) -> Heartbeat | None:
    """Announce this engine in the job's endpoint registry, if one is configured."""
    if not config.registry_redis_url:
        return None
    host = config.host if config.host not in ("0.0.0.0", "::") else socket.gethostname()
    registry = Registry(make_redis(config.registry_redis_url, config.registry_redis_password), config.key_prefix,
                        config.job_id, ttl_s=max(5 * config.heartbeat_s, 5.0))
    heartbeat = Heartbeat(
        registry,
        config.endpoint_id or f"{socket.gethostname()}-{port}",
        config.advertise_url or f"http://{host}:{port}",
        # Not ready while paused or draining: gateways send new work elsewhere.
        lambda: (not server.stopping and not engine.paused, engine.weight_version),
        interval_s=config.heartbeat_s,
    )
    await heartbeat.beat()
    heartbeat.start()
    return heartbeat


def _setup(config: EngineConfig) -> dict:
    set_torch_threads(config.torch_threads)
    return {}


def main(argv: list[str] | None = None) -> None:
    # ValueError: a bad model path; OSError: a port taken
    service_main("engine", EngineConfig, serve, argv, errors=(OSError, ValueError), setup=_setup)


if __name__ == "__main__":
    main()
