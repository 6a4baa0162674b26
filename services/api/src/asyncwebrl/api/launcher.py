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
import math
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
from asyncwebrl.common.models.logprobs import logprob_temperature
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.weights import latest_version
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


# The flags of a job's processes, shared with the Kubernetes launcher (which overrides a few for pods).

def _common_args(config: ApiConfig, job_id: str) -> list[str]:
    return ["--redis-url", config.redis_url, "--key-prefix", config.key_prefix, "--log-format", "text",
            "--job-id", job_id]


def engine_args(config: ApiConfig, job: Job, model: pathlib.Path, ckpt: pathlib.Path, port: int,
                endpoint_id: str, job_id: str | None = None) -> list[str]:
    """``python -m asyncwebrl.engine`` flags of one embedded engine (of ``job_id``, default the job's)."""
    return ["--http-port", str(port), "--host", "127.0.0.1", "--model-path", str(model),
            "--model-roots", ",".join([str(model.parent), str(ckpt)]), "--device", job.spec.resources.device,
            "--registry-redis-url", config.redis_url, "--key-prefix", config.key_prefix,
            "--job-id", job_id or job.job_id, "--endpoint-id", endpoint_id, "--heartbeat-s", "1",
            "--log-format", "text"]


def local_torch_threads(config: ApiConfig, job: Job) -> int:
    """Threads of each local trainer and engine: the configured number, or the cores divided among them
    (on 2 cores, a trainer beside an engine and Chromium ran its step 10x slower with torch's default)."""
    if config.torch_threads:
        return config.torch_threads
    return max(1, (os.cpu_count() or 1) // (job.spec.resources.engines + 1))


def trainer_args(config: ApiConfig, job: Job, model: pathlib.Path, ckpt: pathlib.Path) -> list[str]:
    """``python -m asyncwebrl.trainer`` flags."""
    s = job.spec
    a, r, t = s.algorithm, s.rollout, s.tasks
    return [
        *_common_args(config, job.job_id), "--grpc-port", "0", "--http-port", "0",
        "--buffer-target", config.buffer_target, "--model-path", str(model), "--checkpoint-dir", str(ckpt),
        "--device", s.resources.device,
        "--batch-groups", str(r.batch_groups), "--max-staleness", str(r.max_staleness),
        "--step-norm", a.step_norm, "--k", str(a.k), "--lr", str(a.lr), "--warmup-steps", str(a.warmup_steps),
        "--epochs", str(a.epochs), "--minibatches", str(a.minibatches), "--clip-eps", str(a.clip_eps),
        "--kl-coef", str(a.kl_coef), "--max-steps", str(a.max_steps),
        "--temperature", str(logprob_temperature(r.temperature)),
        "--publish", "endpoints", "--seed", str(t.train_seed), "--archive-dir", str(archive_dir(ckpt.parent, "train")),
        *(["--keep-zero-variance"] if a.keep_zero_variance else [])]


def warm_trainer_args(config: ApiConfig, job: Job, model: pathlib.Path, warm: pathlib.Path) -> list[str]:
    """The warm-start's supervised trainer (``--objective sft`` on demonstration groups)."""
    s = job.spec
    a = s.algorithm
    return [
        *_common_args(config, warm_job_id(job.job_id)), "--grpc-port", "0", "--http-port", "0",
        "--buffer-target", config.buffer_target, "--model-path", str(model), "--checkpoint-dir", str(warm),
        "--device", s.resources.device, "--objective", "sft", "--batch-groups", str(a.warm_start_batch),
        "--max-staleness", "64", "--max-steps", str(a.warm_start_steps), "--lr", str(a.warm_start_lr),
        "--epochs", str(a.warm_start_epochs), "--minibatches", str(min(4, a.warm_start_batch)),
        "--publish", "none", "--full-every", str(a.warm_start_steps), "--seed", str(s.tasks.train_seed),
        "--archive-per-step", "0"]


def gateway_args(config: ApiConfig, spec: JobSpec, job_id: str, model: pathlib.Path, split: str,
                 seed: int) -> list[str]:
    """A rollout gateway over the job's tasks and rollout settings, for ``job_id`` in the buffer."""
    r, t = spec.rollout, spec.tasks
    return [
        *_common_args(config, job_id), "--grpc-port", "0", "--http-port", "0",
        "--gateway-id", f"{job_id}-gw", "--envfleet-target", config.envfleet_target,
        "--buffer-target", config.buffer_target, "--model-path", str(model),
        *(["--tasks", ",".join(t.tasks)] if t.tasks else ["--task-source", t.source]),
        "--difficulties", ",".join(t.difficulties),
        "--max-concurrent-episodes", str(r.concurrency), "--temperature", str(r.temperature),
        "--max-new-tokens", str(r.max_new_tokens), "--seed", str(seed), "--split", split,
        "--steps-easy", str(r.steps_easy), "--steps-medium", str(r.steps_medium), "--steps-hard", str(r.steps_hard),
        "--reward", spec.algorithm.reward]


def rollout_args(config: ApiConfig, job: Job, model: pathlib.Path) -> list[str]:
    """``python -m asyncwebrl.rollout`` flags of the job's gateway (train split)."""
    r = job.spec.rollout
    # Not the demonstrations' seed: RL draws other train instances than the warm-start saw.
    return [*gateway_args(config, job.spec, job.job_id, model, "train", job.spec.tasks.train_seed + RL_SEED_OFFSET),
            "--group-size", str(r.group_size), *(["--sync"] if r.mode == "sync" else [])]


def warm_rollout_args(config: ApiConfig, job: Job, model: pathlib.Path) -> list[str]:
    """The reference agent's episodes as demonstrations. Some may be dropped (a page it cannot solve):
    a margin keeps the warm-start's trainer from waiting for its last batch forever."""
    a = job.spec.algorithm
    demos = math.ceil(1.1 * a.warm_start_steps * a.warm_start_batch) + 2
    return [*gateway_args(config, job.spec, warm_job_id(job.job_id), model, "train", job.spec.tasks.train_seed),
            "--demonstrations", "--group-size", "1", "--max-groups", str(demos)]


RL_SEED_OFFSET = 1000


def warm_job_id(job_id: str) -> str:
    """The warm-start's demonstrations are a job of their own in the buffer, apart from RL groups."""
    return f"{job_id}-warm"


def archive_dir(job_dir: pathlib.Path, source: str) -> pathlib.Path:
    """Where the viewer finds a job's episodes: ``train`` (the trainer's), ``eval-<n>`` (an evaluation's)."""
    return job_dir / "episodes" / source


@dataclasses.dataclass
class Child:
    role: str
    args: list[str]
    log_path: pathlib.Path
    port: int = 0  # engines: their HTTP port
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = 0.0
    once: bool = False  # its work has an end: exit 0 is done, not a crash

    def new_port(self) -> None:
        """An engine starts again on a port chosen now: the one it had may have been taken meanwhile
        (another process's free_port() race), and a restart on it would fail the same way."""
        self.port = free_port()
        self.args[self.args.index("--http-port") + 1] = str(self.port)

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
            a = self.job.spec.algorithm
            await self.launcher.buffer.ConfigureJob(buffer_pb2.ConfigureJobRequest(
                job_id=warm_job_id(self.job.job_id), batch_groups=a.warm_start_batch, max_staleness=64,
                keep_zero_variance=True), timeout=30)
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
        await spawn(child, self.launcher.child_env)
        log.info("started %s", child.role, extra={"job": self.job.job_id, "pid": child.proc.pid})

    async def _engines_healthy(self, timeout: float) -> None:
        await engines_healthy([c for c in self.children if c.role == "engine"], timeout, self._cancel)

    # --- the supervisor ---------------------------------------------------------

    async def run(self) -> None:
        store = self.launcher.store
        try:
            model = resolve_model(self.job.spec, self.launcher.config.model_roots)
            r, a = self.job.spec.rollout, self.job.spec.algorithm
            await self.launcher.buffer.ConfigureJob(buffer_pb2.ConfigureJobRequest(
                job_id=self.job.job_id, batch_groups=r.batch_groups, max_staleness=r.max_staleness,
                keep_zero_variance=a.keep_zero_variance), timeout=30)
            if a.warm_start_steps:
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


class _Cancelled(Exception):
    pass


async def spawn(child: Child, env: dict[str, str]) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(child.log_path, "ab") as out:
        child.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"asyncwebrl.{child.args[0]}", *child.args[1:],
            stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
    child.started = time.monotonic()


async def engines_healthy(engines: list[Child], timeout: float, cancel: asyncio.Event | None = None) -> None:
    deadline = time.monotonic() + timeout
    for e in engines:
        while not await asyncio.to_thread(_healthy, e.port):
            if not e.running:
                raise LaunchError(f"engine exited with {e.proc.returncode if e.proc else '?'}; see {e.log_path}")
            if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
                raise LaunchError(f"engine not healthy after {timeout:.0f}s; see {e.log_path}")
            await asyncio.sleep(0.25)


async def stop_children(children: list[Child], grace: float) -> None:
    """SIGTERM, gateways first (no new episodes), then trainers, then the engines they publish to;
    SIGKILL whatever outlives ``grace``."""
    order = {"rollout": 0, "trainer": 1, "engine": 2}
    for c in sorted(children, key=lambda c: order[c.role.removeprefix("warm-")]):
        if c.running:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
    for c in children:
        if c.proc is None:
            continue
        try:
            await asyncio.wait_for(c.proc.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            await c.proc.wait()


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
        from asyncwebrl.api.evaluate import Evaluations  # it builds on this module

        self.evaluations = Evaluations(self)
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
