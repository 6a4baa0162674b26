"""A job document turned into its processes' command lines: the one place job settings become flags, for
the local launcher, evaluations and the Kubernetes launcher (which overrides a few for pods,
``k8s_manifests.pod_args``).
Every line is parsed by the target service's own config class in tests/api/test_jobspec_bounds.py."""

from __future__ import annotations

import math
import os
import pathlib

from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.errors import LaunchError
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.api.store import Job
from asyncwebrl.common.models.logprobs import logprob_temperature
from asyncwebrl.common.models.tiny import SHIPPED


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


def _common_args(config: ApiConfig, job_id: str) -> list[str]:
    return ["--redis-url", config.redis_url, "--key-prefix", config.key_prefix, "--log-format", "text",
            "--job-id", job_id]


def engine_args(config: ApiConfig, job: Job, model: pathlib.Path, ckpt: pathlib.Path, port: int,
                endpoint_id: str, job_id: str | None = None) -> list[str]:
    """``python -m asyncwebrl.engine`` flags of one embedded engine (of ``job_id``, default the job's)."""
    return ["--http-port", str(port), "--host", config.engine_host, "--model-path", str(model),
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
        "--kl-coef", str(a.kl_coef), "--max-step-kl", str(a.max_step_kl), "--step-backtracks", str(a.step_backtracks),
        "--max-steps", str(a.max_steps),
        "--temperature", str(logprob_temperature(r.temperature)),
        *publish_args(config), "--seed", str(t.train_seed), "--archive-dir", str(archive_dir(ckpt.parent, "train")),
        *(["--keep-zero-variance"] if a.keep_zero_variance else [])]


def publish_args(config: ApiConfig) -> list[str]:
    """weightsync takes each version to the engines, locally (``asyncwebrl up`` starts it) as in a cluster:
    it is the one publisher (ApiConfig requires its address with a launcher)."""
    return ["--publish", "weightsync", "--weightsync-target", config.weightsync_target]


def warm_trainer_args(config: ApiConfig, job: Job, model: pathlib.Path, warm: pathlib.Path) -> list[str]:
    """The warm-start's supervised trainer (``--objective sft`` on demonstration groups)."""
    s = job.spec
    a = s.algorithm
    return [
        *_common_args(config, warm_job_id(job.job_id)), "--grpc-port", "0", "--http-port", "0",
        "--buffer-target", config.buffer_target, "--model-path", str(model), "--checkpoint-dir", str(warm),
        "--device", s.resources.device, "--objective", "sft", "--batch-groups", str(a.warm_start_batch),
        "--max-staleness", str(WARM_MAX_STALENESS), "--max-steps", str(a.warm_start_steps),
        "--lr", str(a.warm_start_lr),
        "--epochs", str(a.warm_start_epochs), "--minibatches", str(min(4, a.warm_start_batch)),
        "--publish", "none", "--full-every", str(a.warm_start_steps), "--seed", str(s.tasks.train_seed),
        "--archive-per-step", "0"]


def task_args(spec: JobSpec) -> list[str]:
    """The job's tasks as gateway flags: its task set, else its tasks or task source."""
    t = spec.tasks
    if t.taskset:
        return ["--taskset", t.taskset,
                *(["--taskset-levels", ",".join(map(str, t.taskset_difficulties))] if t.taskset_difficulties else [])]
    return ["--tasks", ",".join(t.tasks)] if t.tasks else ["--task-source", t.source]


def gateway_args(config: ApiConfig, spec: JobSpec, job_id: str, model: pathlib.Path, split: str,
                 seed: int) -> list[str]:
    """A rollout gateway over the job's tasks and rollout settings, for ``job_id`` in the buffer. With a task
    set, ``split`` picks its tasks too (train: its train split; test: test and test_ood)."""
    r, t = spec.rollout, spec.tasks
    return [
        *_common_args(config, job_id), "--grpc-port", "0", "--http-port", "0",
        "--gateway-id", f"{job_id}-gw", "--envfleet-target", config.envfleet_target,
        "--buffer-target", config.buffer_target, "--model-path", str(model),
        *task_args(spec),
        "--difficulties", ",".join(t.difficulties),
        "--max-concurrent-episodes", str(r.concurrency), "--temperature", str(r.temperature),
        "--max-new-tokens", str(r.max_new_tokens), "--seed", str(seed), "--split", split,
        "--steps-easy", str(r.steps_easy), "--steps-medium", str(r.steps_medium), "--steps-hard", str(r.steps_hard),
        "--reward", spec.algorithm.reward, *judge_args(spec)]


def judge_args(spec: JobSpec) -> list[str]:
    """The job's judge as gateway flags. Never its key: that reaches the gateway as ASYNCWEBRL_JUDGE_API_KEY
    (the local launcher passes the api's own; in Kubernetes a secretKeyRef, ``k8s_manifests.judge_env``)."""
    j = spec.judge
    if j is None:
        return []
    return ["--judge-url", j.url, "--judge-kind", j.kind, *(["--judge-model", j.model] if j.model else []),
            "--judge-concurrency", str(j.concurrency), "--judge-timeout-s", str(j.timeout_s),
            "--judge-retries", str(j.retries)]


def eval_engine_args(config: ApiConfig, job: Job, model: pathlib.Path, port: int, eval_job: str,
                     version: int) -> list[str]:
    """The embedded engine of an evaluation (buffer job ``eval_job``), serving ``model`` as ``version``."""
    ckpt = pathlib.Path(config.run_dir) / job.job_id / "checkpoints"
    return [*engine_args(config, job, model, ckpt, port, f"{eval_job}-engine", job_id=eval_job),
            "--weight-version", str(version)]


def eval_gateway_args(config: ApiConfig, job: Job, model: pathlib.Path, eval_job: str, group_size: int,
                      groups: int) -> list[str]:
    """The gateway of an evaluation: test-split seeds from ``tasks.eval_seed``, ``groups`` groups, then it exits."""
    return [*gateway_args(config, job.spec, eval_job, model, "test", job.spec.tasks.eval_seed),
            "--group-size", str(group_size), "--max-groups", str(groups)]


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
    # A task set's demonstrations are its train tasks' reference answers (the gateway keeps those that have one).
    return [*gateway_args(config, job.spec, warm_job_id(job.job_id), model, "train", job.spec.tasks.train_seed),
            "--demonstrations", "--group-size", "1", "--max-groups", str(demos)]


RL_SEED_OFFSET = 1000
WARM_MAX_STALENESS = 64  # demonstrations carry no policy version that could be stale


def warm_job_id(job_id: str) -> str:
    """The warm-start's demonstrations are a job of their own in the buffer, apart from RL groups."""
    return f"{job_id}-warm"


def eval_job_id(job_id: str, n: int) -> str:
    """The buffer job of a job's n-th evaluation."""
    return f"{job_id}-ev{n}"


def archive_dir(job_dir: pathlib.Path, source: str) -> pathlib.Path:
    """Where the viewer finds a job's episodes: ``train`` (the trainer's), ``eval-<n>`` (an evaluation's)."""
    return job_dir / "episodes" / source
