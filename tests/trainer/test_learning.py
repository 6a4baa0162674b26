"""The whole loop learns: envfleet (Chromium, MiniWoB click-test), rollout gateway,
engine, buffer and trainer, all real processes on the CPU.

1. The random tiny model cannot write a tool call, so it is warm-started: the
   gateway writes the reference agent's episodes (envfleet's Oracle) as
   demonstrations and the trainer fits them (``--objective sft``) for a few steps,
   enough for the format and a rough idea of where buttons are.
2. Success of that policy is measured on held-out seeds (its own gateway
   seeds, sampled at temperature 1 as in training).
3. GRPO with 1/k: gateway, engine and trainer run asynchronously for a fixed
   number of training steps, every version published into the engine through weightsync.
4. The final version is measured on the same held-out seeds.

Measured (128 held-out episodes each; seed = ASYNCWEBRL_LEARNING_SEED):

- lr 1e-3, no warm-up: seed 1 0.297 -> 0.578, seed 2 0.258 -> 0.508 (valid actions
  0.70 -> 0.88-0.98), but seed 3 collapsed: the fresh AdamW's first full-size steps
  broke the tool-call format within two versions, every group failed, every group
  was zero-variance and dropped, and the trainer starved.
- KL 0.1 to the warm-start model and 5 warm-up steps: seed 3 0.188 -> 0.391, but seed
  1 only 0.258 -> 0.297 (the penalty holds the policy back).
- 5 warm-up steps, no KL, 8 SFT steps: seed 3 0.180 -> 0.484, seed 2 0.312 -> 0.562,
  but seed 1 collapsed in CI at version 3 (the SFT policy wrote a valid tool call only
  61% of the time, close to the edge the first RL steps pushed it over).
- 24 SFT steps (valid actions 0.79-0.87): smaller gains, 0.320 -> 0.430 and 0.291 ->
  0.373 (40 RL steps), and a collapse all the same, at version 11 of 60 (approx KL to
  the proximal policy jumped from ~0.001 to 0.07 in one step).

So a collapse is this recipe's own instability on a 0.3M-parameter model at lr 1e-3,
not a matter of the warm-start: one step whose KL to the policy before it jumps from
~0.001 to 0.09-0.5, after which the tool-call format breaks, every group fails, every
group is zero-variance and dropped, and the trainer starves (`make bench-learning`,
2026-12-05: 2 of 5 seeds collapsed for good, a third for 3 minutes). The recipe now
takes the demo job's trust region (``max_step_kl``: such a step is undone and retried at
half the learning rate), and the test runs one job: a collapse fails it, nothing is
retried. Each success rate is measured on 512 held-out episodes, and the assertion is a
one-sided test at p < 0.05 (1.645 standard errors of the difference, about 0.05 here)
rather than a fixed size.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid

import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.weights import latest_version
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

TOKEN = "learning-token"
PREFIX = "learning-test:"
TASK = "miniwob/click-test"
ROLLOUT = ["--tasks", TASK, "--steps-easy", "1", "--max-new-tokens", "48", "--temperature", "1.0"]
# Set ASYNCWEBRL_LEARNING_* to explore; the defaults are what the margin below was measured with.
SFT_STEPS = int(os.environ.get("ASYNCWEBRL_LEARNING_SFT_STEPS", "8"))
SFT_LR = os.environ.get("ASYNCWEBRL_LEARNING_SFT_LR", "3e-3")
SFT_EPOCHS = os.environ.get("ASYNCWEBRL_LEARNING_SFT_EPOCHS", "8")
RL_STEPS = int(os.environ.get("ASYNCWEBRL_LEARNING_RL_STEPS", "40"))
RL_LR = os.environ.get("ASYNCWEBRL_LEARNING_RL_LR", "1e-3")
RL_MINIBATCHES = os.environ.get("ASYNCWEBRL_LEARNING_RL_MINIBATCHES", "2")
RL_KL = os.environ.get("ASYNCWEBRL_LEARNING_RL_KL", "0")
RL_WARMUP = os.environ.get("ASYNCWEBRL_LEARNING_RL_WARMUP", "5")
EVAL_GROUPS = int(os.environ.get("ASYNCWEBRL_LEARNING_EVAL_GROUPS", "128"))
RL_MAX_STEP_KL = os.environ.get("ASYNCWEBRL_LEARNING_RL_MAX_STEP_KL", "0.01")
SEED = int(os.environ.get("ASYNCWEBRL_LEARNING_SEED", "1"))


@pytest.fixture(scope="module")
def world(redis_server, tmp_path_factory, chromium_path):
    logs = tmp_path_factory.mktemp("learning")
    models = tmp_path_factory.mktemp("learning-models")
    shutil.copytree(SHIPPED / "qwen2_5_vl", models / "base")
    env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password}
    common = ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text"]
    buffer = ServiceProcess("buffer", [*common, "--blob-release-grace-s", "0"], env, logs / "buffer.log")
    # The one publisher: the trainer's versions reach the job's engine through it.
    weightsync = ServiceProcess("weightsync", [*common, "--reconcile-interval-s", "0.5",
                                               "--checkpoint-roots", str(models)], env, logs / "weightsync.log")
    buffer.wait_ready()
    # envfleet has no Redis: its screenshots go through the buffer.
    envfleet = ServiceProcess("envfleet", ["--buffer-target", buffer.target, "--log-format", "text", "--browsers", "1",
                                           "--contexts-per-browser", "16", "--task-sources", "miniwob",
                                           "--chromium-path", chromium_path, "--warm-reset"],
                              {"ASYNCWEBRL_AUTH_TOKEN": TOKEN}, logs / "envfleet.log")
    envfleet.wait_ready()
    weightsync.wait_ready()
    ch = channel(buffer.target, TOKEN)
    w = {"envfleet": envfleet, "buffer": buffer, "logs": logs, "env": env, "common": common, "models": models,
         "redis": redis_server, "stub": buffer_pb2_grpc.BufferServiceStub(ch), "procs": [],
         "weightsync": weightsync}
    yield w
    for p in w["procs"]:
        p.stop()
    ch.close()
    weightsync.stop()
    buffer.stop()
    envfleet.stop()


def _engine(w, job: str, model_path) -> EngineProcess:
    r = w["redis"]
    engine = EngineProcess(
        ["--model-path", str(model_path), "--model-roots", str(w["models"]), "--device", "cpu",
         "--registry-redis-url", r.url, "--key-prefix", PREFIX, "--job-id", job, "--endpoint-id", f"engine-{job}",
         "--heartbeat-s", "0.5", "--max-batch-size", "16"],
        w["logs"] / f"engine-{job}.log", env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": r.password},
    )
    w["procs"].append(engine)
    engine.wait_ready()
    return engine


def _service(w, name: str, job: str, *args: str) -> ServiceProcess:
    extra = (["--envfleet-target", w["envfleet"].target] if name == "rollout" else []) + (
        ["--gateway-id", f"gw-{job}"] if name == "rollout" else [])
    svc = ServiceProcess(name, [*w["common"], "--job-id", job, "--buffer-target", w["buffer"].target, *extra, *args],
                         w["env"], w["logs"] / f"{name}-{job}-{uuid.uuid4().hex[:4]}.log")
    w["procs"].append(svc)
    return svc


def _configure(w, job: str, batch_groups: int, eta: int, keep: bool) -> None:
    w["stub"].ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=batch_groups,
                                                          max_staleness=eta, keep_zero_variance=keep))


def success_rate(w, model_path, tag: str) -> float:
    """Episodes of the held-out seeds (gateway seed 4242) with the policy at ``model_path``."""
    job = f"eval-{tag}"
    _configure(w, job, EVAL_GROUPS, 2, True)
    engine = _engine(w, job, model_path)
    gateway = _service(w, "rollout", job, *ROLLOUT, "--group-size", "4", "--max-groups", str(EVAL_GROUPS),
                       "--seed", "4242", "--max-concurrent-episodes", "16")
    assert gateway.proc.wait(600) == 0, gateway.logs()[-3000:]
    engine.stop()
    items = list(w["stub"].GetBatch(buffer_pb2.GetBatchRequest(
        job_id=job, consumer="eval", groups=EVAL_GROUPS, current_version=0, max_staleness=-1, wait_ms=2000)))
    episodes = [e for i in items[1:] for e in i.group.episodes]
    assert len(episodes) == 4 * EVAL_GROUPS
    rate = sum(e.success for e in episodes) / len(episodes)
    valid = sum(not s.invalid_action for e in episodes for s in e.steps) / len(episodes)
    print(f"{tag}: success {rate:.3f}, valid actions {valid:.3f}, e.g. {episodes[0].steps[0].text[:120]!r}")
    return rate


def _wait_for_training(w, job: str, trainer, root, stall_s: float = 300.0) -> None:
    """Until the trainer exits; fails, with the buffer's counts, if no version appears for ``stall_s``
    (a collapsed policy fills the buffer with zero-variance groups; a healthy step takes 3-25 s)."""
    last, since = None, time.monotonic()
    while trainer.proc.poll() is None:
        found = latest_version(root, verify=False)
        version = found[0].version if found else 0
        if version != last:
            last, since = version, time.monotonic()
        if time.monotonic() - since > stall_s:
            stats = w["stub"].Stats(buffer_pb2.BufferStatsRequest(job_id=job))
            pytest.fail(f"collapsed: training stalled at version {version} for {stall_s:.0f}s; buffer: "
                            f"accepted {stats.groups_accepted}, consumed {stats.groups_consumed}, "
                            f"rejected {[(r.reason, r.groups) for r in stats.rejected]}")
        time.sleep(2)
    assert trainer.proc.returncode == 0, trainer.logs()[-3000:]


def grpo(w, job: str, warm, seed: int):
    """GRPO with 1/k, asynchronous (eta 2), every version published to the engine through weightsync;
    the final checkpoint."""
    models = w["models"]
    _configure(w, job, 4, 2, False)
    engine = _engine(w, job, warm)
    trainer = _service(w, "trainer", job, "--model-path", str(warm), "--checkpoint-dir", str(models / job),
                       "--device", "cpu", "--batch-groups", "4", "--max-staleness", "2", "--max-steps",
                       str(RL_STEPS), "--lr", RL_LR, "--minibatches", RL_MINIBATCHES, "--step-norm", "constant",
                       "--kl-coef", RL_KL, "--warmup-steps", RL_WARMUP, "--max-step-kl", RL_MAX_STEP_KL,
                       "--publish", "weightsync", "--weightsync-target", w["weightsync"].target,
                       "--full-every", "1000", "--seed", str(seed))
    gateway = _service(w, "rollout", job, *ROLLOUT, "--group-size", "8", "--max-concurrent-episodes", "16",
                       "--seed", str(1000 + seed))
    try:
        _wait_for_training(w, job, trainer, models / job)
    finally:
        for p in (gateway, trainer, engine):
            p.stop()
    final = latest_version(models / job)
    assert final[0].version == RL_STEPS
    return final[1]


@pytest.mark.timeout(2700)
def test_grpo_raises_success_on_held_out_seeds(world):
    w = world
    models = w["models"]
    t0 = time.monotonic()
    # 1. Demonstrations and a brief supervised warm-start.
    _configure(w, "warm", 16, 64, True)
    demos = _service(w, "rollout", "warm", *ROLLOUT, "--demonstrations", "--group-size", "1",
                     "--max-groups", str(16 * SFT_STEPS), "--max-concurrent-episodes", "8", "--seed", str(SEED))
    sft = _service(w, "trainer", "warm", "--objective", "sft", "--model-path", str(models / "base"),
                   "--checkpoint-dir", str(models / "warm"), "--device", "cpu", "--batch-groups", "16",
                   "--max-staleness", "64", "--max-steps", str(SFT_STEPS), "--lr", SFT_LR, "--epochs", SFT_EPOCHS,
                   "--minibatches", "4",
                   "--publish", "none", "--full-every", "1000", "--seed", str(SEED))
    assert sft.proc.wait(900) == 0, sft.logs()[-3000:]
    assert demos.proc.wait(60) == 0, demos.logs()[-3000:]
    warm = latest_version(models / "warm")[1]
    print(f"[{time.monotonic() - t0:.0f}s] warm-start done")
    before = success_rate(w, warm, "before")
    if os.environ.get("ASYNCWEBRL_LEARNING_STOP_AFTER_SFT"):
        return

    # 2. GRPO, one job: a collapse fails the test, as does a run that trains but does not improve.
    final = grpo(w, "rl", warm, SEED)
    print(f"[{time.monotonic() - t0:.0f}s] GRPO done")
    after = success_rate(w, final, "after")
    n = 4 * EVAL_GROUPS
    margin = max(0.04, 1.645 * math.sqrt(before * (1 - before) / n + after * (1 - after) / n))
    print(f"[{time.monotonic() - t0:.0f}s] success on held-out seeds: {before:.3f} -> {after:.3f} "
          f"(needed +{margin:.3f})")
    # One-sided, p < 0.05: RL must add a statistically clear margin, whatever its size on this run.
    assert after - before >= margin, f"success {before:.3f} -> {after:.3f}, needed +{margin:.3f}"
