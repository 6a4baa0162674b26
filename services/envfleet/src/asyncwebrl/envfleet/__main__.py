"""``python -m asyncwebrl.envfleet``: serve EnvService until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from asyncwebrl.common.blobstore import BlobStore
from asyncwebrl.common.config import parse_config, redacted
from asyncwebrl.common.grpcserver import ServiceRunner, run_service
from asyncwebrl.common.logs import setup_logging
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.envfleet.config import EnvfleetConfig
from asyncwebrl.envfleet.fleet import Fleet
from asyncwebrl.envfleet.service import EnvServicer
from asyncwebrl.envfleet.sources import build_sources
from asyncwebrl.v1 import env_pb2, env_pb2_grpc

log = logging.getLogger("asyncwebrl.envfleet")


async def serve(config: EnvfleetConfig) -> None:
    redis = make_redis(config.redis_url, config.redis_password)
    await redis.ping()
    blobs = BlobStore(redis, config.key_prefix, ttl_s=config.blob_ttl_s)
    fleet = Fleet(config, blobs, build_sources(config.task_sources, config.static_task_dirs, config.miniwob_episode_ms))
    await fleet.start()
    runner = ServiceRunner(config, [env_pb2.DESCRIPTOR.services_by_name["EnvService"].full_name], ready=fleet.ready)

    async def on_stop() -> None:
        await fleet.stop()
        await redis.aclose()

    await run_service(
        runner, lambda server: env_pb2_grpc.add_EnvServiceServicer_to_server(EnvServicer(fleet), server), on_stop
    )


def main(argv: list[str] | None = None) -> None:
    config = parse_config(EnvfleetConfig, argv, prog="python -m asyncwebrl.envfleet")
    setup_logging("envfleet", config.log_level, config.log_format)
    log.info("starting", extra={"config": redacted(config)})
    try:
        asyncio.run(serve(config))
    except OSError as exc:  # e.g. Redis unreachable, port taken
        log.error("cannot start: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
