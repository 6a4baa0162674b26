"""``python -m asyncwebrl.rollout``: run the episode pool for one job until SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from asyncwebrl.common.agent.vision import load_processors
from asyncwebrl.common.blobstore import BlobStore
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.grpcserver import ServiceRunner
from asyncwebrl.common.inference import InferenceClient
from asyncwebrl.common.main import service_main
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.common.registry import Registry
from asyncwebrl.common.tasksets import TaskSetStore
from asyncwebrl.rollout.config import RolloutConfig
from asyncwebrl.rollout.episode import Policy
from asyncwebrl.rollout.judge import Judge, load_rubrics
from asyncwebrl.rollout.service import Gateway
from asyncwebrl.v1 import buffer_pb2_grpc, env_pb2_grpc

log = logging.getLogger("asyncwebrl.rollout")


def load_policy_io(path: str) -> Policy:
    """The tokenizer and image processor only: the gateway never runs the model."""
    tokenizer, processor = load_processors(path)
    return Policy(tokenizer, processor, tokenizer.convert_tokens_to_ids("<|image_pad|>"))


async def serve(config: RolloutConfig) -> None:
    redis = make_redis(config.redis_url, config.redis_password)
    await redis.ping()
    env_channel = aio_channel(config.envfleet_target, config.auth_token)
    buffer_channel = aio_channel(config.buffer_target, config.auth_token, config.max_message_bytes)
    client = InferenceClient(Registry(redis, config.key_prefix, config.job_id, ttl_s=config.registry_ttl_s),
                             api_key=config.engine_api_key, timeout_s=config.generate_timeout_s)
    rubrics = load_rubrics(config.rubrics) if config.rubrics else {}
    judge = Judge(config.judge_url, config.judge_kind, config.judge_api_key, config.judge_model,
                  timeout_s=config.judge_timeout_s, concurrency=config.judge_concurrency,
                  retries=config.judge_retries, backoff_s=config.judge_backoff_s,
                  backoff_cap_s=config.judge_backoff_cap_s) if config.judge_url else None
    gateway = Gateway(config, env_pb2_grpc.EnvServiceStub(env_channel), buffer_pb2_grpc.BufferServiceStub(buffer_channel),
                      BlobStore(redis, config.key_prefix), client, load_policy_io(config.model_path), judge, rubrics,
                      TaskSetStore(redis, config.key_prefix))
    await gateway.load_tasks()
    runner = ServiceRunner(config, [])
    runner.build_server()
    runner.install_signal_handlers()
    await runner.start()
    log.info("running", extra={"tasks": len(gateway.tasks), "job": config.job_id})
    work = asyncio.create_task(gateway.run())
    stopped = asyncio.create_task(runner.wait_stopped())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    gateway.stop()
    # Running groups may finish within the grace; the rest are cancelled rather than left for a
    # SIGKILL, which would strand their browser sessions for envfleet's whole lease timeout.
    done, _ = await asyncio.wait({work}, timeout=config.shutdown_grace_s)
    if not done:
        cancelled = gateway.cancel_running()
        log.warning("%d groups still running %.0fs after the stop: cancelled, their sessions released",
                    cancelled, config.shutdown_grace_s)
        await work
    log.info("stopped", extra={"written": gateway.written_groups, "dropped": gateway.dropped})
    await runner.stop()
    await client.close()
    if judge is not None:
        await judge.close()
    await env_channel.close()
    await buffer_channel.close()
    await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    service_main("rollout", RolloutConfig, serve, argv, errors=(OSError, ValueError))


if __name__ == "__main__":
    main()
