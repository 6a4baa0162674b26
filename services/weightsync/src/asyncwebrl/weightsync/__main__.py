"""``python -m asyncwebrl.weightsync``: serve WeightSyncService until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from asyncwebrl.common.cancel import end_if_cancelled
from asyncwebrl.common.grpcserver import ServiceRunner, run_service
from asyncwebrl.common.main import service_main
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.weightsync.config import WeightSyncConfig
from asyncwebrl.weightsync.discovery import kubernetes_endpoints, probe
from asyncwebrl.weightsync.service import SERVICE, WeightSyncServicer, add_to_server
from asyncwebrl.weightsync.sync import WeightSync

log = logging.getLogger("asyncwebrl.weightsync")


async def register_discovered(sync: WeightSync) -> None:
    """Heartbeat the SGLang servers weightsync is responsible for."""
    c = sync.config
    if c.discovery == "none":
        return
    endpoints = c.static if c.discovery == "static" else await kubernetes_endpoints(c, sync.session)
    versions = await asyncio.gather(*(probe(sync.session, e.url, c.engine_api_key) for e in endpoints))
    for e, version in zip(endpoints, versions, strict=True):
        if version is not None:
            await sync.registry(e.job_id).heartbeat(e.endpoint_id, e.url, True, version, kind="sglang")


async def reconciler(sync: WeightSync, health: dict[str, bool]) -> None:
    while True:
        try:
            await register_discovered(sync)
            for job in await sync.jobs():
                await sync.reconcile(job)
            health["redis"] = True
        except RedisError as exc:
            health["redis"] = False
            log.warning("reconcile failed, retrying: %s", exc)
        except (OSError, RuntimeError, ValueError) as exc:  # discovery: API server away, bad token file
            log.warning("endpoint discovery failed, retrying: %s", exc)
        end_if_cancelled()
        await asyncio.sleep(sync.config.reconcile_interval_s)


async def serve(config: WeightSyncConfig) -> None:
    redis = make_redis(config.redis_url, config.redis_password)
    await redis.ping()
    sync = WeightSync(config, redis)
    await sync.start()
    if config.transport == "broadcast":
        # Engines must reach this address (and a port of the range) to join weightsync's groups.
        log.info("versions go by broadcast (update_weights_from_distributed), disk as the fallback",
                 extra={"master_address": config.broadcast_host, "backend": config.broadcast_backend,
                        "ports": f"{config.broadcast_port}+{config.broadcast_port_count}"
                        if config.broadcast_port else "any free"})
    health = {"redis": True}
    runner = ServiceRunner(config, [SERVICE.full_name], ready=lambda: health["redis"])
    task = asyncio.create_task(reconciler(sync, health))

    async def on_stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sync.close()
        await redis.aclose()

    await run_service(runner, lambda server: add_to_server(WeightSyncServicer(sync), server), on_stop)


def main(argv: list[str] | None = None) -> None:
    service_main("weightsync", WeightSyncConfig, serve, argv, errors=(OSError, RedisError))


if __name__ == "__main__":
    main()
