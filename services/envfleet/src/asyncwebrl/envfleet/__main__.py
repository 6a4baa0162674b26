"""``python -m asyncwebrl.envfleet``: serve EnvService until SIGTERM."""

from __future__ import annotations

from asyncwebrl.common.grpcserver import ServiceRunner, run_service
from asyncwebrl.common.main import service_main
from asyncwebrl.envfleet.blobs import BufferBlobs
from asyncwebrl.envfleet.config import EnvfleetConfig
from asyncwebrl.envfleet.fleet import Fleet
from asyncwebrl.envfleet.service import EnvServicer
from asyncwebrl.envfleet.sources import build_sources
from asyncwebrl.v1 import env_pb2, env_pb2_grpc


async def serve(config: EnvfleetConfig) -> None:
    # Screenshots go to the buffer; a buffer not answering yet makes envfleet unready, not exit.
    blobs = BufferBlobs(config.buffer_target, config.auth_token, config.max_message_bytes, config.buffer_timeout_s)
    await blobs.start()
    fleet = Fleet(config, blobs, build_sources(config.task_sources, config.static_task_dirs, config.miniwob_episode_ms))
    try:
        await fleet.start()
    except BaseException:
        await blobs.close()
        raise
    runner = ServiceRunner(config, [env_pb2.DESCRIPTOR.services_by_name["EnvService"].full_name], ready=fleet.ready)

    async def on_stop() -> None:
        await fleet.stop()
        await blobs.close()

    await run_service(
        runner, lambda server: env_pb2_grpc.add_EnvServiceServicer_to_server(EnvServicer(fleet), server), on_stop
    )


def main(argv: list[str] | None = None) -> None:
    service_main("envfleet", EnvfleetConfig, serve, argv, errors=(OSError,))  # e.g. port taken


if __name__ == "__main__":
    main()
