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
import dataclasses
import logging
import os
import pathlib
import signal
import sys
import time
import urllib.request

import grpc

from asyncwebrl.api import metrics
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.api.store import FINAL, Job, JobStore
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.localstack import free_port
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

log = logging.getLogger("asyncwebrl.api.launcher")


class LaunchError(Exception):
    pass


def resolve_model(spec: JobSpec, roots: tuple[str, ...]) -> pathlib.Path:
    """``tiny/<family>`` is a shipped tiny model; anything else a directory under a model root."""
    if spec.model.path.startswith("tiny/"):
        path = SHIPPED / spec.model.path.split("/", 1)[1]
        if (path / "config.json").is_file():
            return path
        raise LaunchError(f"model.path: no shipped tiny model {spec.model.path!r}")
    for root in roots:
        path = pathlib.Path(root) / spec.model.path
        if (path / "config.json").is_file():
            return path
    raise LaunchError(f"model.path: {spec.model.path!r} is under none of the model roots {list(roots)}")


@dataclasses.dataclass
class Child:
    role: str
    args: list[str]
    log_path: pathlib.Path
    port: int = 0  # engines: their HTTP port
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = 0.0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def view(self) -> dict:
        return {"role": self.role, "pid": self.proc.pid if self.proc else None, "running": self.running,
                "restarts": self.restarts, "exit_code": self.proc.returncode if self.proc else None,
                "log": str(self.log_path)}


class JobRun:
    def __init__(self, launcher: LocalLauncher, job: Job) -> None:
        self.launcher = launcher
        self.job = job
        self.dir = pathlib.Path(launcher.config.run_dir) / job.job_id
        self.children: list[Child] = []
        self.task: asyncio.Task | None = None
        self._cancel = asyncio.Event()

    # --- commands -----------------------------------------------------------

    def _plan(self) -> list[Child]:
        c, s, jid = self.launcher.config, self.job.spec, self.job.job_id
        model = resolve_model(s, c.model_roots)
        ckpt = self.dir / "checkpoints"
        logs = self.dir / "logs"
        device = s.resources.device
        common = ["--redis-url", c.redis_url, "--key-prefix", c.key_prefix, "--log-format", "text",
                  "--job-id", jid]
        roots = ",".join([str(model.parent), str(ckpt)])
        children = []
        for i in range(s.resources.engines):
            port = free_port()
            children.append(Child("engine", [
                "engine", "--http-port", str(port), "--host", "127.0.0.1", "--model-path", str(model),
                "--model-roots", roots, "--device", device, "--registry-redis-url", c.redis_url,
                "--key-prefix", c.key_prefix, "--job-id", jid, "--endpoint-id", f"{jid}-engine-{i}",
                "--heartbeat-s", "1", "--log-format", "text"], logs / f"engine-{i}.log", port=port))
        a, r, t = s.algorithm, s.rollout, s.tasks
        children.append(Child("trainer", [
            "trainer", *common, "--grpc-port", "0", "--http-port", "0", "--buffer-target", c.buffer_target,
            "--model-path", str(model), "--checkpoint-dir", str(ckpt), "--device", device,
            "--batch-groups", str(r.batch_groups), "--max-staleness", str(r.max_staleness),
            "--step-norm", a.step_norm, "--k", str(a.k), "--lr", str(a.lr), "--warmup-steps", str(a.warmup_steps),
            "--epochs", str(a.epochs), "--minibatches", str(a.minibatches), "--clip-eps", str(a.clip_eps),
            "--kl-coef", str(a.kl_coef), "--max-steps", str(a.max_steps), "--temperature", str(r.temperature),
            "--publish", "endpoints", "--seed", str(t.train_seed),
            *(["--keep-zero-variance"] if a.keep_zero_variance else [])], logs / "trainer.log"))
        children.append(Child("rollout", [
            "rollout", *common, "--grpc-port", "0", "--http-port", "0", "--gateway-id", f"{jid}-gw",
            "--envfleet-target", c.envfleet_target, "--buffer-target", c.buffer_target, "--model-path", str(model),
            *(["--tasks", ",".join(t.tasks)] if t.tasks else ["--task-source", t.source]),
            "--difficulties", ",".join(t.difficulties), "--group-size", str(r.group_size),
            "--max-concurrent-episodes", str(r.concurrency), "--temperature", str(r.temperature),
            "--max-new-tokens", str(r.max_new_tokens), "--seed", str(t.train_seed),
            "--steps-easy", str(r.steps_easy), "--steps-medium", str(r.steps_medium), "--steps-hard", str(r.steps_hard),
            *(["--sync"] if r.mode == "sync" else [])], logs / "rollout.log"))
        return children

    async def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.launcher.child_env}
        with open(child.log_path, "ab") as out:
            child.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"asyncwebrl.{child.args[0]}", *child.args[1:],
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        child.started = time.monotonic()
        log.info("started %s", child.role, extra={"job": self.job.job_id, "pid": child.proc.pid})

    async def _engines_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for e in (c for c in self.children if c.role == "engine"):
            while not await asyncio.to_thread(_healthy, e.port):
                if not e.running:
                    raise LaunchError(f"engine exited with {e.proc.returncode if e.proc else '?'}; see {e.log_path}")
                if time.monotonic() > deadline or self._cancel.is_set():
                    raise LaunchError(f"engine not healthy after {timeout:.0f}s; see {e.log_path}")
                await asyncio.sleep(0.25)

    # --- the supervisor ---------------------------------------------------------

    async def run(self) -> None:
        store = self.launcher.store
        try:
            self.children = self._plan()
            r, a = self.job.spec.rollout, self.job.spec.algorithm
            await self.launcher.buffer.ConfigureJob(buffer_pb2.ConfigureJobRequest(
                job_id=self.job.job_id, batch_groups=r.batch_groups, max_staleness=r.max_staleness,
                keep_zero_variance=a.keep_zero_variance), timeout=30)
            for e in (c for c in self.children if c.role == "engine"):
                await self._spawn(e)
            await self._engines_healthy(self.launcher.config.engine_start_timeout_s)
            for c in self.children:
                if c.proc is None:
                    await self._spawn(c)
            await store.set_state(self.job.job_id, "running")
            state, reason = await self._watch()
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
        if state != "cancelled":
            await store.set_state(self.job.job_id, state, reason)
        metrics.JOBS_FINISHED.labels(state).inc()
        log.info("job %s %s %s", self.job.job_id, state, reason)

    async def _watch(self) -> tuple[str, str]:
        trainer = next(c for c in self.children if c.role == "trainer")
        while not self._cancel.is_set():
            if trainer.proc is not None and trainer.proc.returncode == 0:
                return "succeeded", f"trainer finished after {self.job.spec.algorithm.max_steps} steps"
            for c in self.children:
                if c.proc is None or c.proc.returncode is None:
                    continue
                if c.restarts >= self.launcher.config.max_restarts:
                    return "failed", f"{c.role} exited with {c.proc.returncode} after {c.restarts} restarts; " \
                                     f"see {c.log_path}"
                c.restarts += 1
                metrics.RESTARTS.labels(c.role).inc()
                log.warning("%s of %s exited with %s; restart %d", c.role, self.job.job_id, c.proc.returncode,
                            c.restarts)
                await asyncio.sleep(min(5.0, 0.5 * 2 ** (c.restarts - 1)))
                await self._spawn(c)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._cancel.wait(), 0.5)
        return "cancelled", "cancelled by request"

    async def _stop_all(self) -> None:
        # Gateway first (no new episodes), then the trainer, then the engines it publishes to.
        order = {"rollout": 0, "trainer": 1, "engine": 2}
        for c in sorted(self.children, key=lambda c: order[c.role]):
            if c.running:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        grace = self.launcher.config.shutdown_grace_s + 10
        for c in self.children:
            if c.proc is None:
                continue
            try:
                await asyncio.wait_for(c.proc.wait(), grace)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                await c.proc.wait()

    def cancel(self) -> None:
        self._cancel.set()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class LocalLauncher:
    def __init__(self, config: ApiConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.runs: dict[str, JobRun] = {}
        self._channel = aio_channel(config.buffer_target, config.auth_token)
        self.buffer = buffer_pb2_grpc.BufferServiceStub(self._channel)
        self.child_env = {k: v for k, v in {
            "ASYNCWEBRL_AUTH_TOKEN": config.auth_token,
            "ASYNCWEBRL_REDIS_PASSWORD": config.redis_password,
            "ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": config.redis_password,
        }.items() if v}

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

    def status(self, job_id: str) -> list[dict]:
        run = self.runs.get(job_id)
        return [c.view() for c in run.children] if run else []

    async def close(self) -> None:
        """api shutdown: children stop; their jobs stay running in the store and resume on restart."""
        for run in self.runs.values():
            if run.task is not None and not run.task.done():
                run.task.cancel()
        for run in self.runs.values():
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await run.task
        await self._channel.close()
