"""Evaluations: one version of a job's policy on the test split, success per difficulty.

An evaluation is a small job of its own (``<job>-ev<n>`` in the buffer): an engine
serving the version, a gateway on test-split seeds (``--split test``, the job's
``tasks.eval_seed``) that stops after the requested groups, and the api reading
the groups back. Every episode is kept for the viewer (``episodes/eval-<n>``),
then the groups are acked so the buffer frees their screenshots. The record is
``P api:evals:<job>`` (hash, n -> JSON).

The engine and the gateway are run by the api's launcher (``EvalProcesses``): local
children, or Kubernetes workloads, with the command lines of ``jobargs.eval_engine_args``
and ``jobargs.eval_gateway_args``; everything else (the checkpoint's snapshot, the buffer's
settings, reading the groups back) is the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time
from typing import Awaitable, Callable

import grpc

from asyncwebrl.api.errors import EvalConflict, LaunchError
from asyncwebrl.api.jobargs import archive_dir, eval_job_id, resolve_model
from asyncwebrl.api.jobbuffer import configure_job, eval_settings
from asyncwebrl.api.jobspec import EvaluateRequest
from asyncwebrl.api.store import Job, JobStore
from asyncwebrl.common import weights
from asyncwebrl.common.archive import EpisodeArchive
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

log = logging.getLogger("asyncwebrl.api.evaluate")

MAX_EVALUATIONS = 1000  # per job
BLOBS_PER_CALL = 64


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """What a launcher runs for one evaluation: an engine serving ``model`` as ``version`` and a gateway
    that plays ``groups`` groups of ``group_size`` episodes, both for the buffer job ``eval_job``."""

    job: Job
    n: int
    eval_job: str
    version: int
    model: pathlib.Path
    groups: int
    group_size: int


# A launcher's way of running an evaluation's processes: returns once the gateway has finished its groups
# and the processes are gone; raises LaunchError when one of them fails.
EvalProcesses = Callable[[EvalPlan], Awaitable[None]]


def summarise(groups: list[buffer_pb2.Group]) -> dict:
    """Success and episode length (all, of successes, of failures) over all episodes, per
    difficulty and per task, and for a task set's groups per split (``by_split``: test, test_ood)."""
    by: dict[str, list[buffer_pb2.EpisodeRecord]] = {}
    by_task: dict[str, list[buffer_pb2.EpisodeRecord]] = {}
    by_split: dict[str, list[buffer_pb2.EpisodeRecord]] = {}
    for g in groups:
        by.setdefault(g.difficulty or "unknown", []).extend(g.episodes)
        by_task.setdefault(g.task or "unknown", []).extend(g.episodes)
        # A task set's groups are named taskset/<set>/<split>/<id> (rollout.tasksets): test apart from test_ood.
        parts = g.task.split("/", 3)
        if len(parts) == 4 and parts[0] == "taskset":
            by_split.setdefault(parts[2], []).extend(g.episodes)
    episodes = [e for eps in by.values() for e in eps]

    def mean(values: list[int]) -> float | None:
        return sum(values) / len(values) if values else None

    def stats(eps: list[buffer_pb2.EpisodeRecord]) -> dict:
        steps = [s for e in eps for s in e.steps]
        return {"episodes": len(eps), "success": sum(e.success for e in eps) / len(eps) if eps else None,
                "mean_steps": mean([len(e.steps) for e in eps]),
                "mean_steps_success": mean([len(e.steps) for e in eps if e.success]),
                "mean_steps_failure": mean([len(e.steps) for e in eps if not e.success]),
                "valid_actions": sum(not s.invalid_action for s in steps) / len(steps) if steps else None}

    return {**stats(episodes), "groups": len(groups), "by_difficulty": {d: stats(e) for d, e in sorted(by.items())},
            "by_task": {t: stats(e) for t, e in sorted(by_task.items())},
            **({"by_split": {k: stats(e) for k, e in sorted(by_split.items())}} if by_split else {})}


def link_tree(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A copy of a checkpoint made of hard links (instant, no space), or of copies across file systems."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=link)


class Evaluations:
    """``run_dir``: where the jobs' checkpoints are (the api's own path to them); ``run``: the launcher's
    ``EvalProcesses``."""

    def __init__(self, store: JobStore, buffer: buffer_pb2_grpc.BufferServiceStub, run_dir: str,
                 model_roots: tuple[str, ...], run: EvalProcesses) -> None:
        self.buffer = buffer
        self.run_dir = pathlib.Path(run_dir)
        self.model_roots = model_roots
        self.run = run
        self.store = store
        self.redis = store.redis
        self.prefix = store.prefix
        self.tasks: dict[tuple[str, int], asyncio.Task] = {}

    def _key(self, job_id: str) -> str:
        return self.store.evals_key(job_id)

    async def _save(self, doc: dict) -> None:
        doc["updated_ms"] = int(time.time() * 1000)
        await self.redis.hset(self._key(doc["job_id"]), str(doc["n"]), json.dumps(doc))

    async def get(self, job_id: str, n: int) -> dict | None:
        raw = await self.redis.hget(self._key(job_id), str(n))
        return json.loads(raw) if raw else None

    async def list(self, job_id: str) -> list[dict]:
        raw = await self.redis.hgetall(self._key(job_id))
        return sorted((json.loads(v) for v in raw.values()), key=lambda d: d["n"])

    def model_for(self, job: Job, version: int | None) -> tuple[int, pathlib.Path]:
        """The checkpoint of ``version`` (None: the newest); 0 is the starting policy."""
        job_dir = self.run_dir / job.job_id
        ckpt = job_dir / "checkpoints"
        if version is None:
            newest = weights.latest_version(ckpt, verify=False)
            if newest is not None:
                return newest[0].version, newest[1]
            version = 0
        if version == 0:
            return 0, self.start_model(job, job_dir)
        path = weights.version_dir(ckpt, version)
        if not (path / weights.MANIFEST).is_file():
            kept = [v for v, _ in weights.list_versions(ckpt)]
            raise EvalConflict(f"version: {version} is not on disk (kept: {kept or 'none'}, and 0)")
        return version, path

    def base_model(self, job: Job) -> pathlib.Path:
        """The model the job started from, before any warm-start."""
        try:
            return resolve_model(job.spec, self.model_roots)
        except LaunchError as exc:
            raise EvalConflict(str(exc)) from exc

    def start_model(self, job: Job, job_dir: pathlib.Path) -> pathlib.Path:
        if not job.spec.algorithm.warm_start_steps:
            return self.base_model(job)
        warm = weights.latest_version(job_dir / "warm", verify=False)
        if warm is None or warm[0].version < job.spec.algorithm.warm_start_steps:
            raise EvalConflict("version: 0 is the warm-started policy, and the warm-start has not finished")
        return warm[1]

    async def start(self, job: Job, request: EvaluateRequest) -> dict:
        if request.base:
            version, model = 0, self.base_model(job)
        else:
            version, model = self.model_for(job, request.version)
        if await self.redis.hlen(self._key(job.job_id)) >= MAX_EVALUATIONS:
            raise EvalConflict(f"evaluations: {MAX_EVALUATIONS} kept for this job already")
        n = int(await self.redis.incr(self.store.eval_seq_key(job.job_id)))
        # The trainer prunes old versions: the evaluation holds its own links to the files.
        snapshot = self.run_dir / job.job_id / "evals" / f"eval-{n}" / "model"
        try:
            await asyncio.to_thread(link_tree, model, snapshot)
        except (OSError, shutil.Error) as exc:
            raise EvalConflict(f"version: {version} could not be read ({exc})") from exc
        model = snapshot
        now = int(time.time() * 1000)
        doc = {"id": f"eval-{n}", "n": n, "job_id": job.job_id, "version": version, "base": request.base,
               "state": "running", "reason": "",
               "groups_requested": request.groups or job.spec.tasks.eval_groups,
               "group_size": request.group_size or job.spec.rollout.group_size, "split": "test",
               "seed": job.spec.tasks.eval_seed, "created_ms": now, "result": None}
        await self._save(doc)
        self.tasks[(job.job_id, n)] = asyncio.create_task(self._run(job, doc, model))
        return doc

    async def _run(self, job: Job, doc: dict, model: pathlib.Path) -> None:
        key = (job.job_id, doc["n"])
        eval_job = eval_job_id(job.job_id, doc["n"])
        plan = EvalPlan(job, doc["n"], eval_job, doc["version"], model, doc["groups_requested"], doc["group_size"])
        try:
            await configure_job(self.buffer, eval_settings(eval_job, doc["groups_requested"]), 30)
            # Its tokens carry the evaluated version; the buffer takes versions up to the job's trainer version.
            await self.buffer.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(
                job_id=eval_job, version=doc["version"]), timeout=30)
            await self.run(plan)
            groups, batch_ids = await self._collect(eval_job, doc["groups_requested"], doc["version"])
            await self._keep(eval_job, groups, archive_dir(self.run_dir / job.job_id, doc["id"]), doc["version"])
            for batch_id in batch_ids:
                await self.buffer.Ack(buffer_pb2.AckRequest(
                    job_id=eval_job, batch_id=batch_id, consumer="api-eval", trainer_version=doc["version"]),
                    timeout=30)
            doc.update(state="succeeded", result=summarise(groups),
                       reason=f"{len(groups)} of {doc['groups_requested']} groups (the rest were dropped: "
                              f"environment faults)" if len(groups) < doc["groups_requested"] else "")
        except (LaunchError, grpc.aio.AioRpcError, OSError) as exc:
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            doc.update(state="failed", reason=f"evaluate: {detail}")
        except asyncio.CancelledError:
            doc.update(state="failed", reason="evaluate: the api stopped before it finished")
            with contextlib.suppress(Exception):
                await self._save(doc)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must fail the evaluation, not hang it
            log.exception("evaluation %s of %s", doc["id"], job.job_id)
            doc.update(state="failed", reason=f"evaluate: internal error ({type(exc).__name__}); see the api log")
        finally:
            self.tasks.pop(key, None)
        await self._save(doc)
        log.info("evaluation %s of %s %s", doc["id"], job.job_id, doc["state"],
                 extra={"result": doc["result"], "reason": doc["reason"]})

    def running(self, job_id: str, n: int) -> bool:
        """Whether evaluation ``n`` of ``job_id`` is running in this api."""
        return (job_id, n) in self.tasks

    async def _collect(self, eval_job: str, want: int, version: int) -> tuple[list[buffer_pb2.Group], list[str]]:
        groups, batch_ids = [], []
        while len(groups) < want:
            got = 0
            async for item in self.buffer.GetBatch(buffer_pb2.GetBatchRequest(
                    job_id=eval_job, consumer="api-eval", groups=want - len(groups), current_version=version,
                    max_staleness=-1, wait_ms=2000), timeout=60):
                if item.WhichOneof("item") == "header":
                    if item.header.batch_id:
                        batch_ids.append(item.header.batch_id)
                else:
                    groups.append(item.group)
                    got += 1
            if not got:  # the gateway has exited: what is not there was dropped
                break
        return groups, batch_ids

    async def _keep(self, eval_job: str, groups: list[buffer_pb2.Group], root: pathlib.Path, version: int) -> None:
        shas = sorted({s.screenshots[-1].sha256 for g in groups for e in g.episodes for s in e.steps
                       if s.screenshots})
        blobs: dict[str, bytes] = {}
        for i in range(0, len(shas), BLOBS_PER_CALL):
            async for item in self.buffer.GetBlobs(buffer_pb2.GetBlobsRequest(
                    job_id=eval_job, sha256=shas[i:i + BLOBS_PER_CALL]), timeout=60):
                if item.found:
                    blobs[item.sha256] = item.blob.data
        archive = EpisodeArchive(root)

        def write() -> None:
            for g in groups:
                for e in g.episodes:
                    archive.add(g, e, blobs, version)

        await asyncio.to_thread(write)

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
