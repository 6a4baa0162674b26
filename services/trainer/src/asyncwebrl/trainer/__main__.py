"""``python -m asyncwebrl.trainer`` (or ``torchrun --nproc-per-node N -m asyncwebrl.trainer``):
train one job until SIGTERM or ``--max-steps``."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc

from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.grpcserver import ServiceRunner
from asyncwebrl.common.main import service_main
from asyncwebrl.common.models.loading import set_torch_threads
from asyncwebrl.trainer.config import TrainerConfig
from asyncwebrl.trainer.dist import Dist, init_from_env
from asyncwebrl.trainer.errors import BufferFailed
from asyncwebrl.trainer.learner import Learner
from asyncwebrl.trainer.service import Trainer, follow

log = logging.getLogger("asyncwebrl.trainer")


async def serve(config: TrainerConfig, d: Dist) -> None:
    ready = False
    runner = ServiceRunner(config, [], ready=lambda: ready)
    runner.build_server()
    runner.install_signal_handlers()
    await runner.start()
    channel = aio_channel(config.buffer_target, config.auth_token, config.max_message_bytes)
    sync = aio_channel(config.weightsync_target, config.auth_token) if config.publish == "weightsync" else None
    trainer = None
    try:
        learner = await asyncio.to_thread(Learner, config, d)
        trainer = Trainer(config, learner, channel, sync)
        await trainer.start()
        ready = True
        work = asyncio.create_task(trainer.run())
        stopped = asyncio.create_task(runner.wait_stopped())
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        trainer.stop()
        await work  # the step in progress finishes: its version is written, published and acked
        stopped.cancel()
        log.info("stopped", extra={"version": learner.version, "step": learner.step})
    except grpc.aio.AioRpcError as exc:
        raise BufferFailed(config.buffer_target, exc.code().name, exc.details()) from exc
    finally:
        if trainer is not None and d.distributed:
            await asyncio.to_thread(trainer.release_followers)
        await runner.stop()
        await channel.close()
        if sync is not None:
            await sync.close()


def main(argv: list[str] | None = None) -> None:
    dists: list[Dist] = []

    def setup(config: TrainerConfig) -> dict | None:
        set_torch_threads(config.torch_threads)
        d = init_from_env(config.device)
        dists.append(d)
        return {"world": d.world, "device": str(d.device)} if d.main else None  # rank 0 speaks for all

    async def run(config: TrainerConfig) -> None:
        (d,) = dists
        try:
            if d.main:
                await serve(config, d)
            else:
                # Rank 0 decides when to stop and tells the others in its next broadcast.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                learner = Learner(config, d)
                learner.restore()
                follow(learner)
        finally:
            d.close()

    service_main("trainer", TrainerConfig, run, argv, errors=(BufferFailed, OSError, ValueError), setup=setup,
                 failing="continue")


if __name__ == "__main__":
    main()
