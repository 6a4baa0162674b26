"""The local launcher: a job's own processes (engines, rollout gateway, trainer)
as children of the api, logs under ``<run-dir>/<job>/logs``.

A crashed child is started again, at most ``--max-restarts`` times per child
(the trainer resumes from its latest full checkpoint, the gateway's groups are
idempotent, an engine re-registers). The job succeeds when the trainer exits 0
after ``max_steps``, fails when a child crashes once too often, and on cancel
every child gets SIGTERM, then SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib

import grpc

from asyncwebrl.api import metrics
from asyncwebrl.api.children import Child, engines_healthy, spawn, stop_children
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.errors import LaunchError
from asyncwebrl.api.evaluate import EvalPlan, Evaluations
from asyncwebrl.api.jobargs import (engine_args, eval_engine_args, eval_gateway_args, local_torch_threads,
                                    resolve_model, rollout_args, trainer_args, warm_rollout_args, warm_trainer_args)
from asyncwebrl.api.jobbuffer import configure_job, job_settings
from asyncwebrl.api.launchers import stop_evaluations
from asyncwebrl.api.store import FINAL, Job, JobStore
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.localstack import free_port
from asyncwebrl.common.weights import latest_version
from asyncwebrl.v1 import buffer_pb2_grpc

log = logging.getLogger("asyncwebrl.api.launcher")


class _Cancelled(Exception):
    pass


class JobRun:
    def __init__(self, launcher: LocalLauncher, job: Job) -> None:
        self.launcher = launcher
        self.job = job
        self.dir = pathlib.Path(launcher.config.run_dir) / job.job_id
        self.children: list[Child] = []
        self.task: asyncio.Task | None = None
        self.phase = "pending"
        self.start_model: pathlib.Path | None = None  # version 0 of the RL phase
        self._cancel = asyncio.Event()

    # --- commands -----------------------------------------------------------

    def _plan(self, model: pathlib.Path) -> list[Child]:
        """The RL phase: engines serving ``model`` (the starting policy), the trainer, the gateway."""
        c, jid = self.launcher.config, self.job.job_id
        ckpt = self.dir / "checkpoints"
        logs = self.dir / "logs"
        children = []
        threads = ["--torch-threads", str(local_torch_threads(c, self.job))]
        for i in range(self.job.spec.resources.engines):
            port = free_port()
            args = engine_args(c, self.job, model, ckpt, port, f"{jid}-engine-{i}")
            children.append(Child("engine", ["engine", *args, *threads], logs / f"engine-{i}.log", port=port))
        children.append(Child("trainer", ["trainer", *trainer_args(c, self.job, model, ckpt), *threads],
                              logs / "trainer.log"))
        children.append(Child("rollout", ["rollout", *rollout_args(c, self.job, model)], logs / "rollout.log"))
        return children

    def _warm_plan(self, model: pathlib.Path) -> list[Child]:
        c, logs, warm = self.launcher.config, self.dir / "logs", self.dir / "warm"
        return [Child("warm-trainer", ["trainer", *warm_trainer_args(c, self.job, model, warm)],
                      logs / "warm-trainer.log"),
                Child("warm-rollout", ["rollout", *warm_rollout_args(c, self.job, model)], logs / "warm-rollout.log",
                      once=True)]

    async def _warm_start(self, model: pathlib.Path) -> pathlib.Path | None:
        """The warm-start, unless an earlier run of this job finished it. Returns the warm policy, or None
        when cancelled; raises LaunchError when it fails."""
        steps = self.job.spec.algorithm.warm_start_steps
        done = latest_version(self.dir / "warm")
        if done is None or done[0].version < steps:
            self.phase = "warm_start"
            await configure_job(self.launcher.buffer, job_settings(self.job, "warm_start"), 30)
            self.children = self._warm_plan(model)
            for child in self.children:
                await self._spawn(child)
            state, reason = await self._watch()
            await self._stop_all()
            if state == "cancelled":
                return None
            if state != "succeeded":
                raise LaunchError(f"warm-start: {reason}")
            done = latest_version(self.dir / "warm")
            if done is None or done[0].version < steps:
                raise LaunchError("warm-start: the trainer exited without writing its last version")
        log.info("warm-start done", extra={"job": self.job.job_id, "version": done[0].version})
        return done[1]

    async def _spawn(self, child: Child) -> None:
        await spawn(child, self.launcher.env_for(child))
        log.info("started %s", child.role, extra={"job": self.job.job_id, "pid": child.proc.pid})

    async def _engines_healthy(self, timeout: float) -> None:
        await engines_healthy([c for c in self.children if c.role == "engine"], timeout, self._cancel)

    # --- the supervisor ---------------------------------------------------------

    async def run(self) -> None:
        store = self.launcher.store
        try:
            model = resolve_model(self.job.spec, self.launcher.config.model_roots)
            await configure_job(self.launcher.buffer, job_settings(self.job), 30)
            if self.job.spec.algorithm.warm_start_steps:
                await store.set_state(self.job.job_id, "running")
                model = await self._warm_start(model)
                if model is None:
                    raise _Cancelled
            self.phase, self.start_model = "rl", model
            self.children = self._plan(model)
            for e in (c for c in self.children if c.role == "engine"):
                await self._spawn(e)
            await self._engines_healthy(self.launcher.config.engine_start_timeout_s)
            for c in self.children:
                if c.proc is None:
                    await self._spawn(c)
            await store.set_state(self.job.job_id, "running")
            state, reason = await self._watch()
        except _Cancelled:
            state, reason = "cancelled", "cancelled by request"
        except (LaunchError, grpc.aio.AioRpcError, OSError) as exc:
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            state, reason = "failed", f"launch: {detail}"
        except asyncio.CancelledError:
            await self._stop_all()
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must fail the job, not leave it pending
            log.exception("launcher error in %s", self.job.job_id)
            state, reason = "failed", f"launch: internal error ({type(exc).__name__}); see the api log"
        await self._stop_all()
        self.phase = state
        if state != "cancelled":
            await store.set_state(self.job.job_id, state, reason)
        metrics.JOBS_FINISHED.labels(state).inc()
        log.info("job %s %s %s", self.job.job_id, state, reason)

    async def _watch(self) -> tuple[str, str]:
        """Until the phase's trainer exits 0 (succeeded), a child crashes once too often, or cancel."""
        trainer = next(c for c in self.children if c.role.endswith("trainer"))
        while not self._cancel.is_set():
            if trainer.proc is not None and trainer.proc.returncode == 0:
                a = self.job.spec.algorithm
                steps = a.warm_start_steps if trainer.role == "warm-trainer" else a.max_steps
                return "succeeded", f"{trainer.role} finished after {steps} steps"
            for c in self.children:
                if c.proc is None or c.proc.returncode is None or (c.once and c.proc.returncode == 0):
                    continue
                if c.restarts >= self.launcher.config.max_restarts:
                    return "failed", f"{c.role} exited with {c.proc.returncode} after {c.restarts} restarts; " \
                                     f"see {c.log_path}"
                c.restarts += 1
                metrics.RESTARTS.labels(c.role).inc()
                log.warning("%s of %s exited with %s; restart %d", c.role, self.job.job_id, c.proc.returncode,
                            c.restarts)
                await asyncio.sleep(min(5.0, 0.5 * 2 ** (c.restarts - 1)))
                if c.role == "engine":
                    c.new_port()  # it heartbeats its new URL into the registry the gateway routes by
                await self._spawn(c)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._cancel.wait(), 0.5)
        return "cancelled", "cancelled by request"

    async def _stop_all(self) -> None:
        await stop_children(self.children, self.launcher.config.shutdown_grace_s + 10)

    def cancel(self) -> None:
        self._cancel.set()


class LocalLauncher:
    """The api's launcher with ``--launcher local`` (a ``launchers.Launcher``)."""

    def __init__(self, config: ApiConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.runs: dict[str, JobRun] = {}
        self._channel = aio_channel(config.buffer_target, config.auth_token)
        self.buffer = buffer_pb2_grpc.BufferServiceStub(self._channel)
        self.evaluations = Evaluations(store, self.buffer, config.run_dir, config.model_roots, self._run_evaluation)
        self.child_env = {k: v for k, v in {
            "ASYNCWEBRL_AUTH_TOKEN": config.auth_token,
            "ASYNCWEBRL_REDIS_PASSWORD": config.redis_password,
            "ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": config.redis_password,
            # A job's judge key (judge.api_key_secret) is the api's own, in the environment, never on argv.
            "ASYNCWEBRL_JUDGE_API_KEY": os.environ.get("ASYNCWEBRL_JUDGE_API_KEY", ""),
        }.items() if v}
        # Only the engines get their own key (their --api-key); the gateways send ASYNCWEBRL_ENGINE_API_KEY.
        self.engine_env = {**self.child_env, **({"ASYNCWEBRL_API_KEY": config.engine_api_key}
                                                if config.engine_api_key else {})}

    def env_for(self, child: Child) -> dict[str, str]:
        return self.engine_env if child.role == "engine" else self.child_env

    async def _run_evaluation(self, plan: EvalPlan) -> None:
        """An evaluation's engine and gateway as children (logs ``eval-<n>-engine``, ``eval-<n>-rollout``),
        until the gateway has played its groups."""
        c = self.config
        logs = pathlib.Path(c.run_dir) / plan.job.job_id / "logs"
        port = free_port()
        engine = Child("engine", ["engine", *eval_engine_args(c, plan.job, plan.model, port, plan.eval_job,
                                                              plan.version)],
                       logs / f"eval-{plan.n}-engine.log", port=port)
        gateway = Child("rollout", ["rollout", *eval_gateway_args(c, plan.job, plan.model, plan.eval_job,
                                                                  plan.group_size, plan.groups)],
                        logs / f"eval-{plan.n}-rollout.log", once=True)
        try:
            await spawn(engine, self.engine_env)
            await engines_healthy([engine], c.engine_start_timeout_s)
            await spawn(gateway, self.child_env)
            code = await gateway.proc.wait()
            if code != 0:
                raise LaunchError(f"the evaluation's gateway exited with {code}; see {gateway.log_path}")
        finally:
            await stop_children([engine, gateway], c.shutdown_grace_s + 10)

    def start(self, job: Job) -> None:
        run = JobRun(self, job)
        self.runs[job.job_id] = run
        run.task = asyncio.create_task(run.run())

    async def resume(self) -> None:
        """Jobs the store says are pending or running (an api restart) start again."""
        offset = 0
        while True:
            jobs, nxt = await self.store.list(200, offset)
            for job in jobs:
                if job.state not in FINAL and job.job_id not in self.runs:
                    log.info("resuming %s", job.job_id)
                    self.start(job)
            if nxt is None:
                return
            offset = nxt

    async def cancel(self, job_id: str) -> None:
        await self.store.set_state(job_id, "cancelled", "cancelled by request")
        run = self.runs.get(job_id)
        if run is not None and run.task is not None:
            run.cancel()
            await run.task

    async def stop(self, job_id: str, timeout_s: float) -> list[str]:
        """Before a purge: the job cancelled if it still runs, its evaluations too, and its children gone."""
        job = await self.store.get(job_id)
        run = self.runs.get(job_id)
        if job is not None and job.state not in FINAL:
            await self.cancel(job_id)
        elif run is not None and run.task is not None and not run.task.done():
            run.cancel()  # final in the store, but its processes still being stopped
        left = await stop_evaluations(self.evaluations, job_id, timeout_s)
        if run is not None and run.task is not None and not run.task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.task), timeout_s)
        if run is not None:
            if run.task is not None and not run.task.done():
                left.append("the job's run (its processes are still being stopped)")
            left += [f"{c.role} (pid {c.proc.pid})" for c in run.children
                     if c.proc is not None and c.proc.returncode is None]
        if not left:
            self.runs.pop(job_id, None)
        return left

    async def status(self, job_id: str) -> list[dict]:
        run = self.runs.get(job_id)
        return [c.view() for c in run.children] if run else []

    def phase(self, job_id: str) -> str | None:
        """pending, warm_start, rl, or the final state; None for a job this api does not run."""
        run = self.runs.get(job_id)
        return run.phase if run else None

    async def close(self) -> None:
        """api shutdown: children stop; their jobs stay running in the store and resume on restart."""
        await self.evaluations.close()
        for run in self.runs.values():
            if run.task is not None and not run.task.done():
                run.task.cancel()
        for run in self.runs.values():
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await run.task
        await self._channel.close()
