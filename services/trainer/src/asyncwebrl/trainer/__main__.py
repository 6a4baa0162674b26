"""``python -m asyncwebrl.trainer`` (or ``torchrun --nproc-per-node N -m asyncwebrl.trainer``):
train one job until SIGTERM or ``--max-steps``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc

from asyncwebrl.common.config import parse_config, redacted
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.grpcserver import ServiceRunner
from asyncwebrl.common.logs import setup_logging
from asyncwebrl.common.models.loading import set_torch_threads
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.trainer.config import TrainerConfig
from asyncwebrl.trainer.dist import Dist, init_from_env
from asyncwebrl.trainer.learner import Learner
from asyncwebrl.trainer.service import Trainer, follow

log = logging.getLogger("asyncwebrl.trainer")


async def serve(config: TrainerConfig, d: Dist) -> None:
    ready = False
    runner = ServiceRunner(config, [], ready=lambda: ready)
    runner.build_server()
    runner.install_signal_handlers()
    await runner.start()
    redis = make_redis(config.redis_url, config.redis_password) if config.publish == "endpoints" else None
    channel = aio_channel(config.buffer_target, config.auth_token, config.max_message_bytes)
    sync = aio_channel(config.weightsync_target, config.auth_token) if config.publish == "weightsync" else None
    trainer = None
    try:
        learner = await asyncio.to_thread(Learner, config, d)
        trainer = Trainer(config, learner, channel, redis, sync)
        await trainer.start()
        ready = True
        work = asyncio.create_task(trainer.run())
        stopped = asyncio.create_task(runner.wait_stopped())
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        trainer.stop()
        await work  # the step in progress finishes: its version is written, published and acked
        stopped.cancel()
        log.info("stopped", extra={"version": learner.version, "step": learner.step})
    finally:
        if trainer is not None and d.distributed:
            await asyncio.to_thread(trainer.release_followers)
        await runner.stop()
        await channel.close()
        if sync is not None:
            await sync.close()
        if redis is not None:
            await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    config = parse_config(TrainerConfig, argv, prog="python -m asyncwebrl.trainer")
    setup_logging("trainer", config.log_level, config.log_format)
    set_torch_threads(config.torch_threads)
    d = init_from_env(config.device)
    if d.main:
        log.info("starting", extra={"config": redacted(config), "world": d.world, "device": str(d.device)})
    try:
        if d.main:
            asyncio.run(serve(config, d))
        else:
            # Rank 0 decides when to stop and tells the others in its next broadcast.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            learner = Learner(config, d)
            learner.restore()
            follow(learner)
    except grpc.aio.AioRpcError as exc:
        log.error("cannot continue: the buffer at %s answered %s: %s", config.buffer_target, exc.code().name,
                  exc.details())
        sys.exit(1)
    except (OSError, ValueError) as exc:
        log.error("cannot continue: %s", exc)
        sys.exit(1)
    finally:
        d.close()


if __name__ == "__main__":
    main()
