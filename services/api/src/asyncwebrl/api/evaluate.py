"""Evaluations: one version of a job's policy on the test split, success per difficulty.

An evaluation is a small job of its own (``<job>-ev<n>`` in the buffer): an engine
serving the version, a gateway on test-split seeds (``--split test``, the job's
``tasks.eval_seed``) that stops after the requested groups, and the api reading
the groups back. Every episode is kept for the viewer (``episodes/eval-<n>``),
then the groups are acked so the buffer frees their screenshots. The record is
``P api:evals:<job>`` (hash, n -> JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import shutil
import time

import grpc

from asyncwebrl.api.jobspec import EvaluateRequest
from asyncwebrl.api.children import Child, engines_healthy, spawn, stop_children
from asyncwebrl.api.jobargs import LaunchError, archive_dir, engine_args, gateway_args, resolve_model
from asyncwebrl.api.store import Job
from asyncwebrl.common import weights
from asyncwebrl.common.archive import EpisodeArchive
from asyncwebrl.common.localstack import free_port
from asyncwebrl.v1 import buffer_pb2

log = logging.getLogger("asyncwebrl.api.evaluate")

MAX_EVALUATIONS = 1000  # per job
BLOBS_PER_CALL = 64


class EvalConflict(Exception):
    """The evaluation cannot run (the version is not on disk, too many evaluations): a 409."""


def summarise(groups: list[buffer_pb2.Group]) -> dict:
    """Success and episode length over all episodes and per difficulty."""
    by: dict[str, list[buffer_pb2.EpisodeRecord]] = {}
    for g in groups:
        by.setdefault(g.difficulty or "unknown", []).extend(g.episodes)
    episodes = [e for eps in by.values() for e in eps]

    def stats(eps: list[buffer_pb2.EpisodeRecord]) -> dict:
        wins = [len(e.steps) for e in eps if e.success]
        steps = [s for e in eps for s in e.steps]
        return {"episodes": len(eps), "success": sum(e.success for e in eps) / len(eps) if eps else None,
                "mean_steps": sum(len(e.steps) for e in eps) / len(eps) if eps else None,
                "mean_steps_success": sum(wins) / len(wins) if wins else None,
                "valid_actions": sum(not s.invalid_action for s in steps) / len(steps) if steps else None}

    return {**stats(episodes), "groups": len(groups), "by_difficulty": {d: stats(e) for d, e in sorted(by.items())}}


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
    def __init__(self, launcher) -> None:
        self.launcher = launcher
        self.redis = launcher.store.redis
        self.prefix = launcher.store.prefix
        self.tasks: dict[tuple[str, int], asyncio.Task] = {}
        self.children: dict[tuple[str, int], list[Child]] = {}

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}api:evals:{job_id}"

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
        job_dir = pathlib.Path(self.launcher.config.run_dir) / job.job_id
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
            return resolve_model(job.spec, self.launcher.config.model_roots)
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
        n = int(await self.redis.incr(f"{self.prefix}api:evalseq:{job.job_id}"))
        # The trainer prunes old versions: the evaluation holds its own links to the files.
        snapshot = pathlib.Path(self.launcher.config.run_dir) / job.job_id / "evals" / f"eval-{n}" / "model"
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
        eval_job = f"{job.job_id}-ev{doc['n']}"
        job_dir = pathlib.Path(self.launcher.config.run_dir) / job.job_id
        logs = job_dir / "logs"
        c = self.launcher.config
        port = free_port()
        engine = Child("engine", ["engine", *engine_args(c, job, model, job_dir / "checkpoints", port,
                                                         f"{eval_job}-engine", job_id=eval_job),
                                  "--weight-version", str(doc["version"])],
                       logs / f"eval-{doc['n']}-engine.log", port=port)
        gateway = Child("rollout", ["rollout", *gateway_args(c, job.spec, eval_job, model, "test",
                                                             job.spec.tasks.eval_seed),
                                    "--group-size", str(doc["group_size"]),
                                    "--max-groups", str(doc["groups_requested"])],
                        logs / f"eval-{doc['n']}-rollout.log", once=True)
        self.children[key] = [engine, gateway]
        try:
            await self.launcher.buffer.ConfigureJob(buffer_pb2.ConfigureJobRequest(
                job_id=eval_job, batch_groups=doc["groups_requested"], max_staleness=0, keep_zero_variance=True),
                timeout=30)
            # Its tokens carry the evaluated version; the buffer takes versions up to the job's trainer version.
            await self.launcher.buffer.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(
                job_id=eval_job, version=doc["version"]), timeout=30)
            await spawn(engine, self.launcher.child_env)
            await engines_healthy([engine], c.engine_start_timeout_s)
            await spawn(gateway, self.launcher.child_env)
            code = await gateway.proc.wait()
            if code != 0:
                raise LaunchError(f"the evaluation's gateway exited with {code}; see {gateway.log_path}")
            await stop_children([engine], c.shutdown_grace_s + 10)
            groups, batch_ids = await self._collect(eval_job, doc["groups_requested"], doc["version"])
            await self._keep(eval_job, groups, archive_dir(job_dir, doc["id"]), doc["version"])
            for batch_id in batch_ids:
                await self.launcher.buffer.Ack(buffer_pb2.AckRequest(
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
            await stop_children(self.children.pop(key, []), c.shutdown_grace_s + 10)
            self.tasks.pop(key, None)
        await self._save(doc)
        log.info("evaluation %s of %s %s", doc["id"], job.job_id, doc["state"],
                 extra={"result": doc["result"], "reason": doc["reason"]})

    async def _collect(self, eval_job: str, want: int, version: int) -> tuple[list[buffer_pb2.Group], list[str]]:
        groups, batch_ids = [], []
        while len(groups) < want:
            got = 0
            async for item in self.launcher.buffer.GetBatch(buffer_pb2.GetBatchRequest(
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
            async for item in self.launcher.buffer.GetBlobs(buffer_pb2.GetBlobsRequest(
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
