"""``python -m asyncwebrl.buffer``: serve BufferService until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from asyncwebrl.buffer import metrics
from asyncwebrl.buffer.config import BufferConfig
from asyncwebrl.buffer.service import SERVICE, BufferServicer, add_to_server
from asyncwebrl.buffer.store import GroupStore
from asyncwebrl.common.blobstore import BlobStore
from asyncwebrl.common.cancel import end_if_cancelled
from asyncwebrl.common.grpcserver import ServiceRunner, run_service
from asyncwebrl.common.main import service_main
from asyncwebrl.common.redisclient import make_redis

log = logging.getLogger("asyncwebrl.buffer")


async def sweep_once(store: GroupStore, blobs: BlobStore, known: set[str]) -> None:
    """Reclaim expired blobs of every job and refresh the per-job gauges."""
    jobs = set(await blobs.jobs())
    for job in jobs:
        metrics.SWEPT_BLOBS.inc(await blobs.sweep(job))
        s = await store.stats(job)
        for gauge, value in (
            (metrics.STREAM_LENGTH, s.stream_length),
            (metrics.STREAM_PENDING, s.stream_pending),
            (metrics.STREAM_BYTES, s.group_bytes),
            (metrics.OLDEST_AGE, s.oldest_entry_age_s),
            (metrics.DEAD_LETTERS, s.dead_letters),
            (metrics.BLOB_COUNT, s.blob_count),
            (metrics.BLOB_BYTES, s.blob_bytes),
            (metrics.TRAINER_VERSION, s.trainer_version),
            (metrics.GATE_CAPACITY, s.gate_capacity),
        ):
            gauge.labels(job).set(value)
        kinds = {"accepted": s.groups_accepted, "running": s.groups_running, "consumed": s.groups_consumed,
                 "duplicate": s.groups_duplicate, "zero_variance_kept": s.zero_variance_kept}
        kinds.update({f"rejected_{r.reason}": r.groups for r in s.rejected})
        for kind, value in kinds.items():
            metrics.GROUPS.labels(job, kind).set(value)
    for gone in known - jobs:
        for gauge in metrics.PER_JOB:
            with contextlib.suppress(KeyError):
                gauge.remove(gone)
    known.clear()
    known.update(jobs)
    metrics.BLOB_BYTES_ALL.set(await blobs.total_bytes())
    metrics.BLOB_BUDGET.set(await blobs.budget())


async def sweeper(store: GroupStore, blobs: BlobStore, interval_s: float, health: dict[str, bool]) -> None:
    known: set[str] = set()
    while True:
        try:
            await sweep_once(store, blobs, known)
            health["redis"] = True
        except RedisError as exc:
            # Not ready while Redis is away: every RPC would fail UNAVAILABLE.
            health["redis"] = False
            log.warning("sweep failed, retrying: %s", exc)
        end_if_cancelled()
        await asyncio.sleep(interval_s)


async def serve(config: BufferConfig) -> None:
    redis = make_redis(config.redis_url, config.redis_password)
    await redis.ping()
    blobs = BlobStore(redis, config.key_prefix, ttl_s=config.blob_ttl_s, max_blob_bytes=config.max_blob_bytes)
    await blobs.set_budget(config.blob_budget_bytes)
    store = GroupStore(redis, blobs, config)
    health = {"redis": True}
    runner = ServiceRunner(config, [SERVICE.full_name], ready=lambda: health["redis"])
    sweep_task = asyncio.create_task(sweeper(store, blobs, config.sweep_interval_s, health))

    async def on_stop() -> None:
        sweep_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweep_task
        await redis.aclose()

    await run_service(runner, lambda server: add_to_server(BufferServicer(store, blobs, config), server), on_stop)


def main(argv: list[str] | None = None) -> None:
    # e.g. Redis unreachable, port taken
    service_main("buffer", BufferConfig, serve, argv, errors=(OSError, RedisError), large_allocations=True)


if __name__ == "__main__":
    main()
