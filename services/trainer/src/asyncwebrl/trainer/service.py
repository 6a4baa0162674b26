"""The trainer's loop for one job: its I/O (buffer, checkpoints, publishing, metrics).

Rank 0 talks to the world: it gathers a batch from the buffer (complete GRPO
groups, fresh enough for the staleness bound), fetches their screenshots, and
broadcasts both to the other ranks. Every rank then trains on the same batch
(its share of the rows, prepared by ``batching.training_rows``) and takes part
in gathering the weights; rank 0 writes version v+1, publishes it through
weightsync (``--publish weightsync``; ``none`` only writes it), and acks the
batch with the new version, which is what the buffer's staleness gate reads.
The job's settings in the buffer (``ConfigureJob``) are the api's to send.

The version directory's manifest names the batches trained into it, so a
trainer killed between writing a version and acking its batch acks it on
restart instead of training it twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import time

import grpc

from asyncwebrl.common import weights
from asyncwebrl.common.archive import EpisodeArchive
from asyncwebrl.trainer import metrics
from asyncwebrl.trainer.batching import training_rows
from asyncwebrl.trainer.config import TrainerConfig
from asyncwebrl.trainer.errors import StorageMismatch
from asyncwebrl.trainer.learner import Learner
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc, weightsync_pb2, weightsync_pb2_grpc

log = logging.getLogger("asyncwebrl.trainer")
BLOBS_PER_CALL = 256
# How long the trainer waits out a buffer restart at an ack (Ack is idempotent) before giving up.
ACK_RETRY_S = 300.0


@dataclasses.dataclass
class Batch:
    """What rank 0 broadcasts: the groups (serialised) and their screenshots."""

    version: int                       # the version this batch trains into
    batch_ids: list[str]
    groups: list[bytes]
    blobs: dict[str, bytes]
    rejected: dict[str, int]
    wait_s: float


def train_on(learner: Learner, batch: Batch) -> dict:
    """Every rank: train on the batch, write the version (rank 0), full checkpoint when due."""
    config = learner.config
    groups = [buffer_pb2.Group.FromString(g) for g in batch.groups]
    rows, images, dropped = training_rows(groups, batch.blobs, learner.policy, config.step_norm, config.k,
                                          learner.vocab_size)
    lr = learner.lr
    step_metrics = learner.train(rows, images, batch.version - 1)
    started = time.monotonic()
    manifest = learner.write_version(batch.version, ",".join(batch.batch_ids))
    learner.version = batch.version
    full = batch.version % config.full_every == 0
    if full:
        learner.save_full()
    checkpoint_s = time.monotonic() - started
    compute_s = step_metrics.seconds_proximal + step_metrics.seconds_forward_backward + step_metrics.seconds_optimizer
    tokens = sum(r.tokens for r in rows) * (config.epochs + (1 if config.objective == "grpo" else 0))
    entry = metrics.batch_metrics(groups, batch.version - 1)
    entry |= {
        "step": learner.step,
        "version": batch.version,
        "rows": len(rows),
        # The buffer's decision, while it gathered this batch.
        "zero_variance_dropped": batch.rejected.get("zero_variance", 0),
        "rejected": {**batch.rejected, **{f"trainer_{k}": v for k, v in dropped.items()}},
        "loss": step_metrics.loss,
        "grad_norm": step_metrics.grad_norm,
        "clip_fraction": step_metrics.clip_fraction,
        "dual_clip_fraction": step_metrics.dual_clip_fraction,
        "cap_fraction": step_metrics.cap_fraction,
        "ess": step_metrics.ess,
        "behav_gap": step_metrics.behav_gap,
        "adv_pos_mass": step_metrics.adv_pos_mass,
        "adv_neg_mass": step_metrics.adv_neg_mass,
        "entropy": step_metrics.entropy,
        "approx_kl": step_metrics.approx_kl,
        "kl_ref": step_metrics.kl_ref,
        "step_kl": step_metrics.step_kl,
        "backtracks": step_metrics.backtracks,
        "step_skipped": step_metrics.step_skipped,
        "lr": lr,
        "micro_batches": step_metrics.micro_batches,
        "train_tokens": tokens,
        "train_tokens_per_s": tokens / compute_s if compute_s > 0 else 0.0,
        "full_checkpoint": full,
        "seconds": {
            "wait": batch.wait_s,
            "proximal": step_metrics.seconds_proximal,
            "forward_backward": step_metrics.seconds_forward_backward,
            "optimizer": step_metrics.seconds_optimizer,
            "checkpoint": checkpoint_s,
            "publish": 0.0,
        },
    }
    return {"entry": entry, "manifest": manifest}


class Trainer:
    """Rank 0's side: buffer, blobs, weightsync."""

    def __init__(self, config: TrainerConfig, learner: Learner, channel: grpc.aio.Channel,
                 weightsync: grpc.aio.Channel | None = None) -> None:
        self.config = config
        self.learner = learner
        self.stub = buffer_pb2_grpc.BufferServiceStub(channel)
        self.weightsync = weightsync_pb2_grpc.WeightSyncServiceStub(weightsync) if weightsync is not None else None
        self.stopping = asyncio.Event()
        # The first GetBatch of this life takes back what the last one read and never acked.
        self.own_pending_taken = False
        self.log = metrics.JsonlLog(config.metrics_log or pathlib.Path(config.checkpoint_dir) / "metrics.jsonl")
        self.archive = EpisodeArchive(config.archive_dir or pathlib.Path(config.checkpoint_dir) / "episodes")

    async def start(self) -> None:
        """Reconcile storage, buffer and engines after a restart (the api has configured the job)."""
        c = self.config
        manifest = await asyncio.to_thread(self.learner.restore)
        stats = await self.stub.Stats(buffer_pb2.BufferStatsRequest(job_id=c.job_id))
        version = self.learner.version
        if stats.trainer_version > version:
            raise StorageMismatch(f"checkpoint_dir: holds version {version} but job {c.job_id} is at version "
                             f"{stats.trainer_version} in the buffer; point --checkpoint-dir at the job's storage")
        for batch_id in filter(None, (manifest.batch_id if manifest else "").split(",")):
            try:
                reply = await self.stub.Ack(buffer_pb2.AckRequest(job_id=c.job_id, batch_id=batch_id,
                                                                  consumer=c.consumer, trainer_version=version))
                log.info("acked the batch of the last version after a restart",
                         extra={"batch_id": batch_id, "groups": reply.groups, "already_acked": reply.already_acked})
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        await self.stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=c.job_id, version=version))
        if manifest is not None:
            await self.publish(manifest.version)
        log.info("ready at version %d, step %d%s", version, self.learner.step,
                 f" (resumed from {self.learner.resumed_from})" if self.learner.resumed_from else "")
        metrics.VERSION.set(version)

    async def gather(self) -> Batch | None:
        """Groups for one batch (several GetBatch calls if they come in slowly); None when stopping."""
        c = self.config
        need = c.min_batch_groups or c.batch_groups
        started = time.monotonic()
        batch = Batch(self.learner.version + 1, [], [], {}, {}, 0.0)
        while len(batch.groups) < need and not self.stopping.is_set():
            header = None
            call = self.stub.GetBatch(buffer_pb2.GetBatchRequest(
                job_id=c.job_id, consumer=c.consumer, groups=c.batch_groups - len(batch.groups),
                current_version=self.learner.version, max_staleness=-1, wait_ms=int(c.batch_wait_s * 1000),
                take_own_pending=not self.own_pending_taken))
            async for item in call:
                if item.WhichOneof("item") == "header":
                    header = item.header
                else:
                    batch.groups.append(item.group.SerializeToString())
            if header is None:
                raise RuntimeError("GetBatch: the stream had no header")
            self.own_pending_taken = True
            if header.batch_id:
                batch.batch_ids.append(header.batch_id)
            for r in header.rejected:
                batch.rejected[r.reason] = batch.rejected.get(r.reason, 0) + int(r.groups)
        if self.stopping.is_set() and len(batch.groups) < need:
            return None  # unacked groups go back to the stream after the buffer's idle timeout
        shas = sorted({ref.sha256 for g in batch.groups for e in buffer_pb2.Group.FromString(g).episodes
                       for s in e.steps for ref in s.screenshots})
        for i in range(0, len(shas), BLOBS_PER_CALL):
            async for item in self.stub.GetBlobs(buffer_pb2.GetBlobsRequest(job_id=c.job_id,
                                                                            sha256=shas[i:i + BLOBS_PER_CALL])):
                if item.found:
                    batch.blobs[item.sha256] = item.blob.data
        batch.wait_s = time.monotonic() - started
        return batch

    async def publish(self, version: int) -> float:
        """Publish through weightsync (it verifies, fans out, holds failed endpoints, and catches up engines
        that come up behind); retried while it is away. Training goes on if it stays away: the engines lag,
        and the staleness gate bounds what that costs. Seconds taken; 0 with ``--publish none``."""
        if self.weightsync is None:
            return 0.0
        c = self.config
        started = time.monotonic()
        path = weights.version_dir(c.checkpoint_dir, version).resolve()
        manifest = await asyncio.to_thread(weights.read_manifest, path, False)
        request = weightsync_pb2.PublishRequest(job_id=c.job_id, version=version, path=str(path),
                                                manifest_checksum=manifest.checksum)
        for attempt in range(5):
            try:
                reply = await self.weightsync.Publish(request, timeout=c.publish_timeout_s)
                for r in reply.results:
                    if not r.ok:
                        metrics.PUBLISH_FAILURES.inc()
                        log.error("endpoint %s failed to load version %d: %s", r.endpoint_id, version, r.error)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED) and attempt < 4:
                    await asyncio.sleep(2 ** attempt)
                    continue
                metrics.PUBLISH_FAILURES.inc()
                log.error("weightsync did not publish version %d: %s %s", version, exc.code().name, exc.details())
                break
        return time.monotonic() - started

    async def step(self) -> bool:
        batch = await self.gather()
        if batch is None:
            return False
        result = await asyncio.to_thread(self._train, batch)
        entry = result["entry"]
        entry["seconds"]["publish"] = await self.publish(batch.version)
        total = sum(entry["seconds"].values())
        entry["trajectories_per_hour"] = entry["episodes"] * 3600 / total if total else 0.0
        entry["env_steps_per_s"] = entry["env_steps"] / total if total else 0.0
        entry["unix"] = time.time()
        metrics.record(entry)
        # The row before the acks: the version is written, and a restart acks its batch from the manifest
        # but has no row to write.
        self.log.write(entry)
        for batch_id in batch.batch_ids:
            reply = await self._ack(batch_id, batch.version)
            if reply.lost:
                log.warning("groups of a batch were taken over by another consumer", extra={"lost": reply.lost})
        if self.config.archive_per_step:
            await asyncio.to_thread(self._keep_episodes, batch)
        log.info("step %d -> version %d: %d groups, success %.3f, loss %.5f, grad norm %.4f", entry["step"],
                 entry["version"], entry["groups"], entry["success"] or 0.0, entry["loss"], entry["grad_norm"])
        return True

    async def _ack(self, batch_id: str, version: int) -> buffer_pb2.AckResponse:
        """Ack, waiting out a buffer (or Redis) restart for up to ACK_RETRY_S rather than exiting on it."""
        request = buffer_pb2.AckRequest(job_id=self.config.job_id, batch_id=batch_id, consumer=self.config.consumer,
                                        trainer_version=version)
        deadline, delay = time.monotonic() + ACK_RETRY_S, 0.5
        while True:
            try:
                return await self.stub.Ack(request)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise
                log.warning("the buffer is away; retrying the ack", extra={"batch_id": batch_id})
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    def _keep_episodes(self, batch: Batch) -> None:
        """A few of the batch's episodes for the viewer: a success and a failure first, then the rest."""
        groups = [buffer_pb2.Group.FromString(g) for g in batch.groups]
        pairs = [(g, e) for g in groups for e in g.episodes]
        firsts = [next((p for p in pairs if p[1].success == ok), None) for ok in (True, False)]
        chosen = [p for p in firsts if p] + [p for p in pairs if p not in firsts]
        try:
            for group, episode in chosen[:self.config.archive_per_step]:
                self.archive.add(group, episode, batch.blobs, batch.version - 1)
            self.archive.prune(self.config.archive_keep)
        except OSError as exc:  # the viewer's copy must never stop training
            log.warning("could not keep episodes for the viewer: %s", exc)

    def _train(self, batch: Batch) -> dict:
        self.learner.d.broadcast(batch)
        return train_on(self.learner, batch)

    async def run(self) -> None:
        c = self.config
        while not self.stopping.is_set() and (c.max_steps == 0 or self.learner.step < c.max_steps):
            if not await self.step():
                break

    def stop(self) -> None:
        self.stopping.set()

    def release_followers(self) -> None:
        self.learner.d.broadcast(None)


def follow(learner: Learner) -> None:
    """Ranks other than 0: train on what rank 0 broadcasts until it says stop."""
    while True:
        batch = learner.d.broadcast(None)
        if batch is None:
            return
        train_on(learner, batch)
