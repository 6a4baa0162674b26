"""`make bench-scale`: the control plane at scale, made of the real services with FAKE GPUs and browsers.

Real, as deployed: redis-server (AOF on), the buffer, weightsync (disk transport, the inference
endpoints registered by its static discovery as it registers SGLang pods) and one or more rollout
gateways, each started with the flags the api's launcher derives for the job (``api.jobargs``) and
the job configured in the buffer by the api's own ``job_settings``. Stand-ins, named as FAKES, for
what cannot run here:

  bench/sim_sglang.py   N inference endpoints speaking SGLang's HTTP API; a request's latency
                        follows the stated time to first token, per-token latency (growing with the
                        requests decoding at once) and output length distribution
  bench/sim_env.py      EnvService, with stated allocate and step latencies, crash rate, episode
                        lengths (the AsyncWebRL paper's 5.1 steps per success, 12.5 per failure) and
                        1280x720 screenshots stored through the buffer's PutBlobs as envfleet does
  bench/sim_trainer.py  the real trainer loop (GetBatch, GetBlobs, version manifest, Publish, Ack)
                        around a training step that takes a stated time

The api is not in the loop: no per-episode work passes through it (it launches jobs and answers
users), so it has nothing to saturate here.

Three parts, each printed as it goes:

  ratio        the same job synchronous and asynchronous at each staleness bound in ``--etas`` (the
               paper's 2, and 4), interleaved ``--repeats`` times, with the training step as long as
               the asynchronous rollout of one batch ("balanced"); the speed-up (trajectories/hour
               trained) with its standard error, against the analytical ideal from the stated
               distributions (a synchronous batch waits for its longest episode)
  concurrency  asynchronous, a fast trainer: 32 to 1024 concurrent episodes through one gateway, in
               real time (``--sweep-time-scale 1``): env steps/s achieved against offered, CPU seconds
               each real service spends per env step and per episode, Redis commands/s, and where
               each service saturates (one core busy, or achieved below 80% of offered)
  engines      4 to 64 endpoints at a fixed concurrency: publish time and gateway CPU per step

From those, the replicas of the gateway and the buffer a 1,000-episode cluster needs. ``--parts``
runs some parts and keeps the others, with their dates and commands, from the file at ``--out``.
Prints one JSON object on its last line; writes bench/results/scale.json and scale.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from asyncwebrl.api import jobargs  # noqa: E402
from asyncwebrl.api.config import ApiConfig  # noqa: E402
from asyncwebrl.api.jobbuffer import job_settings  # noqa: E402
from asyncwebrl.api.jobspec import JobSpec  # noqa: E402
from asyncwebrl.api.store import Job  # noqa: E402
from asyncwebrl.common.grpcclient import channel as grpc_channel  # noqa: E402
from asyncwebrl.common.localstack import RedisServer, ServiceProcess  # noqa: E402
from asyncwebrl.common.models.tiny import SHIPPED  # noqa: E402

MODEL = SHIPPED / "qwen2_5_vl"  # the tokenizer and image processor the gateways load
from asyncwebrl.v1 import buffer_pb2_grpc  # noqa: E402
from jobs import machine, now_iso, rate_std_err, ratio_std_err, say  # noqa: E402
from sim_common import ScriptProcess, decoding_per_engine, episode_duration_samples  # noqa: E402

NAME = "scale"
RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))
TOKEN = "bench-scale-token"
PREFIX = "asyncwebrl:"
TASKS = 16
CLUSTER_EPISODES = 1000
REPLICA_CORES = 0.7  # a replica is sized to keep one core at most this busy
WEIGHTSYNC_CONCURRENCY = 16  # endpoints loading a version at once (weightsync --concurrency)
PARTS = ("ratio", "concurrency", "engines")

# The stated GPU and browser figures (seconds of real time; every run divides them by its time scale).
#   engine: SGLang serving an 8B model on one H100 answers ShareGPT requests in 0.6-1.1 s at batch 1-8
#     (docs.gpustack.ai, "Optimizing Qwen3-8B Latency on NVIDIA H100 GPUs"), about 8 ms per output token;
#     per-token latency doubles by 64 requests decoding at once; the agent writes Memory / Progress /
#     Intention / Action before its tool call (REFERENCE.md): median 150 output tokens, p90 400.
#   env: a live page's action, settle and 1280x720 screenshot (REFERENCE.md: goto 35-75 ms locally,
#     screenshot 30-75 ms; live sites load slower), allocate = new context + first page load.
#   episodes: AsyncWebRL's paper, successes 5.1 steps, failures 12.5; step limits 10 easy / 20 medium.
#   weights: SGLang's weight-update write-ups report about 0.6 s for an 8B model by broadcast; from disk
#     a few seconds.
PROFILE = {
    "engine": {"ttft_base_s": 0.05, "prefill_s_per_1k_tokens": 0.05, "itl_s": 0.008, "itl_knee": 64,
               "max_running": 256, "output_tokens_median": 150, "output_tokens_p90": 400, "load_s": 2.0},
    "env": {"step_median_s": 0.6, "step_p90_s": 2.0, "allocate_median_s": 1.5, "allocate_p90_s": 4.0,
            "success_rate": 0.4, "success_steps_mean": 5.1, "failure_steps_mean": 12.5, "crash_rate": 0.002,
            "screenshot_pool": 256, "medium_fraction": 0.5},
    "job": {"group_size": 8, "batch_groups": 4, "max_staleness": 2, "steps_easy": 10, "steps_medium": 20,
            "max_new_tokens": 512},
}


def spec_for(mode: str, concurrency: int, batch_groups: int, max_staleness: int) -> JobSpec:
    j = PROFILE["job"]
    return JobSpec.model_validate({
        "name": f"scale-{mode}",
        "tasks": {"tasks": [f"sim/task-{i}" for i in range(TASKS)], "difficulties": ["easy", "medium"]},
        "rollout": {"mode": mode, "concurrency": concurrency, "group_size": j["group_size"],
                    "batch_groups": batch_groups, "max_staleness": 0 if mode == "sync" else max_staleness,
                    "max_new_tokens": j["max_new_tokens"], "steps_easy": j["steps_easy"],
                    "steps_medium": j["steps_medium"]},
        "algorithm": {"keep_zero_variance": True, "max_steps": 100_000},
    })


def without_ports(args: list[str]) -> list[str]:
    """The launcher's flags without its port choices (0 = any), which ServiceProcess makes itself."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("--grpc-port", "--http-port"):
            skip = True
        else:
            out.append(a)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads (children not included)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Point:
    """One configuration: a fresh stack, one job, measured over a window."""

    def __init__(self, tmp: pathlib.Path, *, mode: str, concurrency: int, engines: int, gateways: int,
                 train_s: float, time_scale: float, batch_groups: int, max_staleness: int, seed: int) -> None:
        self.dir = tmp / f"{mode}-c{concurrency}-e{engines}-g{gateways}-eta{max_staleness}-{seed}"
        self.dir.mkdir(parents=True)
        self.mode, self.concurrency, self.engines, self.gateways = mode, concurrency, engines, gateways
        self.train_s, self.time_scale, self.seed = train_s, time_scale, seed
        self.spec = spec_for(mode, concurrency, batch_groups, max_staleness)
        self.job = Job(f"scale-{mode}-{seed}", self.spec, "running", 0, 0)
        self.procs: dict[str, object] = {}
        self.redis: RedisServer | None = None
        self.sglang: subprocess.Popen | None = None

    def start(self) -> None:
        d, ts = self.dir, self.time_scale
        self.redis = RedisServer(d)
        env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": self.redis.password}
        quiet = ["--log-format", "text", "--log-level", "WARNING"]
        common = ["--redis-url", self.redis.url, "--key-prefix", PREFIX, *quiet]
        buffer = self._service("buffer", ServiceProcess, [*common], env)
        e, v = PROFILE["engine"], PROFILE["env"]
        ports = d / "endpoints.json"
        self.sglang = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "sim_sglang.py"), "--count", str(self.engines), "--port-file",
             str(ports), "--time-scale", str(ts), "--seed", str(self.seed),
             *[f"--{k.replace('_', '-')}={e[k]}" for k in ("ttft_base_s", "prefill_s_per_1k_tokens", "itl_s",
                                                            "itl_knee", "max_running", "output_tokens_median",
                                                            "output_tokens_p90", "load_s")]],
            stdout=open(d / "sim_sglang.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not ports.exists():
            if self.sglang.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sim_sglang did not start: {(d / 'sim_sglang.log').read_text()[-2000:]}")
            time.sleep(0.2)
        self.endpoints = json.loads(ports.read_text())
        static = ",".join(f"{self.job.job_id}={ep['id']}@{ep['url']}" for ep in self.endpoints)
        ckpt = d / "checkpoints"
        ckpt.mkdir()
        weightsync = self._service("weightsync", ServiceProcess, [
            *common, "--discovery", "static", "--static-endpoints", static, "--checkpoint-roots", str(d),
            "--reconcile-interval-s", "2", "--concurrency", str(WEIGHTSYNC_CONCURRENCY)], env)
        self._service("sim_env", ScriptProcess, [
            *quiet, "--buffer-target", buffer.target, "--tasks", str(TASKS), "--seed", str(self.seed),
            "--time-scale", str(ts),
            *[f"--{k.replace('_', '-')}={v[k]}" for k in ("step_median_s", "step_p90_s", "allocate_median_s",
                                                           "allocate_p90_s", "success_rate", "success_steps_mean",
                                                           "failure_steps_mean", "crash_rate", "screenshot_pool",
                                                           "medium_fraction")],
            "--max-sessions", str(self.concurrency + 64)], env)
        api = ApiConfig(redis_url=self.redis.url, key_prefix=PREFIX, allow_no_token=True, run_dir=str(d),
                        envfleet_target=self.procs["sim_env"].target, buffer_target=buffer.target,
                        weightsync_target=weightsync.target)
        with grpc_channel(buffer.target, TOKEN) as ch:
            buffer_pb2_grpc.BufferServiceStub(ch).ConfigureJob(job_settings(self.job), timeout=10)
        self._service("trainer", ScriptProcess, [
            *without_ports(jobargs.trainer_args(api, self.job, MODEL, ckpt)), *quiet[2:],
            "--sim-train-s", str(self.train_s), "--sim-time-scale", str(ts)], env, name="sim_trainer")
        per_gateway = max(1, self.concurrency // self.gateways)
        for i in range(self.gateways):
            args = without_ports(jobargs.rollout_args(api, self.job, MODEL))
            # Replicas of one Deployment differ by name, which is also their seed salt (k8s_manifests.pod_args).
            name = f"{self.job.job_id}-gw{i}"
            self._service(f"gateway{i}", ServiceProcess, [
                *args, *quiet[2:], "--gateway-id", name, "--seed-salt", name,
                "--max-concurrent-episodes", str(per_gateway)], env, name="rollout")

    def _service(self, key: str, cls, args: list[str], env: dict, name: str | None = None):
        p = self.procs[key] = cls(name or key, args, env, self.dir / f"{key}.log")
        p.wait_ready(120)
        return p

    def pids(self) -> dict[str, int]:
        out = {k: p.proc.pid for k, p in self.procs.items()}
        out["redis"] = self.redis.proc.pid
        out["sim_sglang"] = self.sglang.pid
        return out

    def rows(self) -> list[dict]:
        path = self.dir / "checkpoints" / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def redis_commands(self) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.redis.port), "--no-auth-warning", "-a",
                              self.redis.password, "INFO", "stats"], capture_output=True, text=True, timeout=10)
        for line in out.stdout.splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":")[1])
        raise RuntimeError(f"redis INFO stats: {out.stdout[:200]} {out.stderr[:200]}")

    def env_steps(self) -> tuple[int, int]:
        """Env steps and episodes (allocations) the fake env has served, from its Prometheus counters."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.procs['sim_env'].http_port}/metrics",
                                    timeout=10) as resp:
            text = resp.read().decode()
        values = {(s.name, s.labels.get("result", "")): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}
        return int(values.get(("sim_env_steps_total", ""), 0)), int(values.get(("sim_env_allocations_total", "ok"), 0))

    def snapshot(self) -> dict:
        steps, episodes = self.env_steps()
        return {"t": time.monotonic(), "cpu": {k: cpu_seconds(pid) for k, pid in self.pids().items()},
                "redis_commands": self.redis_commands(), "env_steps": steps, "episodes": episodes,
                "trainer_steps": len(self.rows())}

    def stop(self) -> None:
        """Everything started, in the deployment's order (gateways first), also after a failed start."""
        for key in [k for k in self.procs if k.startswith("gateway")] + ["trainer", "sim_env", "weightsync"]:
            if key in self.procs:
                self.procs[key].stop()
        if self.sglang is not None:
            self.sglang.send_signal(signal.SIGTERM)
            try:
                self.sglang.wait(30)
            except subprocess.TimeoutExpired:
                self.sglang.kill()
                self.sglang.wait()
        if "buffer" in self.procs:
            self.procs["buffer"].stop()
        if self.redis is not None:
            self.redis.stop()


def measure(point: Point, *, warmup_s: float, window_s: float, min_steps: int = 0,
            max_wait_s: float = 1800) -> dict:
    """Start, wait ``warmup_s`` (and for the trainer's first step when ``min_steps``), then measure until
    ``window_s`` has passed and the trainer has taken ``min_steps`` more steps."""
    try:
        point.start()
        started = time.monotonic()
        time.sleep(warmup_s)
        while min_steps and not point.rows():
            if time.monotonic() - started > max_wait_s:
                raise RuntimeError(f"{point.dir.name}: no training step in {max_wait_s:.0f}s")
            time.sleep(0.5)
        first = len(point.rows())
        a = point.snapshot()
        while (time.monotonic() - a["t"] < window_s or len(point.rows()) - first < min_steps):
            if time.monotonic() - started > max_wait_s:
                raise RuntimeError(f"{point.dir.name}: {len(point.rows()) - first} of {min_steps} steps "
                                   f"in {max_wait_s:.0f}s")
            time.sleep(0.5)
        b = point.snapshot()
        rows = point.rows()
    finally:
        point.stop()
    span = b["t"] - a["t"]
    steps = b["env_steps"] - a["env_steps"]
    episodes = b["episodes"] - a["episodes"]
    cpu = {k: b["cpu"][k] - a["cpu"][k] for k in b["cpu"] if k in a["cpu"]}
    gateway_cpu = sum(v for k, v in cpu.items() if k.startswith("gateway"))
    out = {
        "mode": point.mode, "concurrency": point.concurrency, "engines": point.engines, "gateways": point.gateways,
        "time_scale": point.time_scale, "window_s": span,
        "env_steps_per_s": steps / span, "episodes_per_s": episodes / span,
        "redis_commands_per_s": (b["redis_commands"] - a["redis_commands"]) / span,
        "core_fraction": {k: v / span for k, v in cpu.items()},
        "cpu_ms_per_env_step": {k: 1000 * v / max(1, steps) for k, v in cpu.items()},
        "gateway_cpu_ms_per_env_step": 1000 * gateway_cpu / max(1, steps),
        "trainer_rows": rows,
    }
    return out


def trained_rate(rows: list[dict], scale: float) -> dict:
    """Trajectories per hour the trainer took in, in stated (real) time, with its standard error."""
    if len(rows) < 3:
        raise SystemExit(f"{len(rows)} training steps: too few for a rate; lengthen the window")
    span = rows[-1]["unix"] - rows[0]["unix"]
    later = rows[1:]
    rate = 3600 * sum(r["episodes"] for r in later) / span / scale
    return {"trajectories_per_hour": rate, "trajectories_per_hour_se": 3600 * rate_std_err(later, rows[0]["unix"])
            / scale, "steps": len(rows), "seconds_per_step": span / (len(rows) - 1) * scale,
            "publish_s": statistics.fmean(r["seconds"]["publish"] for r in later) * scale,
            "wait_s": statistics.fmean(r["seconds"]["wait"] for r in later) * scale,
            # Groups the buffer turned away at collection, older than the bound: rollout work lost.
            "stale_rejected": sum(r.get("rejected", {}).get("stale", 0) for r in later)}


def ideal_speedup(batch_episodes: int, concurrency: int, engines: int, train_s: float, publish_s: float,
                  rng: random.Random, samples: int = 4000) -> dict:
    """From the stated distributions: a synchronous step waits for the longest of its batch's episodes,
    then trains and publishes; an asynchronous one is bounded by the trainer (train + publish) or by
    rollout at ``concurrency`` episodes in flight, whichever is slower."""
    durations = episode_duration_samples(PROFILE, rng, samples,
                                         running_per_engine=decoding_per_engine(PROFILE, rng, concurrency, engines))
    mean_d = statistics.fmean(durations)
    batches = [max(rng.sample(durations, batch_episodes)) for _ in range(800)]
    longest = statistics.fmean(batches)
    sync_step = longest + train_s + publish_s
    async_step = max(batch_episodes * mean_d / concurrency, train_s + publish_s)
    return {"episode_mean_s": mean_d, "batch_longest_episode_s": longest, "sync_step_s": sync_step,
            "async_step_s": async_step, "ideal": sync_step / async_step}


def async_mode(eta: int) -> str:
    return f"async_eta{eta}"


def run_ratio(args, tmp: pathlib.Path, rng: random.Random) -> dict:
    """Sync and async at each staleness bound in ``--etas`` (the first, the paper's 2, is the headline),
    interleaved in rounds whose order alternates, so machine noise falls on every mode alike."""
    j = PROFILE["job"]
    batch = j["batch_groups"] * j["group_size"]
    etas = [int(x) for x in args.etas.split(",")]
    durations = episode_duration_samples(PROFILE, rng, 4000,
                                         running_per_engine=decoding_per_engine(PROFILE, rng, batch, args.engines))
    # Balanced: the trainer takes as long as the asynchronous rollout of one batch at the same concurrency.
    train_s = statistics.fmean(durations) if args.train_s is None else args.train_s
    say(NAME, f"ratio: batch {batch} episodes, train step {train_s:.1f}s (stated), time scale {args.time_scale}, "
              f"eta {etas}")
    order = [("sync", 0)] + [(async_mode(eta), eta) for eta in etas]
    runs: dict[str, list[dict]] = {mode: [] for mode, _ in order}
    for rep in range(args.repeats):
        for mode, eta in (order if rep % 2 == 0 else order[::-1]):
            point = Point(tmp, mode="sync" if mode == "sync" else "async", concurrency=batch, engines=args.engines,
                          gateways=1, train_s=train_s, time_scale=args.time_scale, batch_groups=j["batch_groups"],
                          max_staleness=eta, seed=rep)
            m = measure(point, warmup_s=2, window_s=0, min_steps=args.min_steps)
            m |= trained_rate(m.pop("trainer_rows"), args.time_scale)
            m["max_staleness"] = eta
            runs[mode].append(m)
            say(NAME, f"  {mode} #{rep + 1}: {m['trajectories_per_hour']:.0f} traj/h (stated time), "
                      f"{m['seconds_per_step']:.1f}s per step, waiting {m['wait_s']:.1f}s of it, "
                      f"{m['stale_rejected']} groups rejected as stale")
    rate = {}
    for mode, ms in runs.items():
        rates = [m["trajectories_per_hour"] for m in ms]
        # Repeats are independent: their spread gives the standard error, or each run's own if only one.
        se = (statistics.stdev(rates) / math.sqrt(len(rates)) if len(rates) > 1
              else ms[0]["trajectories_per_hour_se"])
        rate[mode] = (statistics.fmean(rates), se)
    speedups = {mode: {"eta": eta, "speedup": rate[mode][0] / rate["sync"][0],
                       "speedup_se": ratio_std_err(rate[mode][0], rate[mode][1], rate["sync"][0], rate["sync"][1])}
                for mode, eta in order[1:]}
    head = speedups[async_mode(etas[0])]
    return {"train_s": train_s, "batch_episodes": batch, "etas": etas, "runs": runs,
            "trajectories_per_hour": {k: v[0] for k, v in rate.items()},
            "trajectories_per_hour_se": {k: v[1] for k, v in rate.items()},
            "by_eta": speedups, "speedup": head["speedup"], "speedup_se": head["speedup_se"]}


def offered_steps_per_s(concurrency: int, engines: int, rng: random.Random, scale: float) -> float:
    """Env steps/s the stated latencies allow at ``concurrency`` episodes in flight, if nothing else waits."""
    durations, steps = episode_duration_samples(
        PROFILE, rng, 3000, running_per_engine=decoding_per_engine(PROFILE, rng, concurrency, engines), with_steps=True)
    return concurrency * statistics.fmean(steps) / statistics.fmean(durations) * scale


def run_sweep(args, tmp: pathlib.Path, rng: random.Random, key: str, values: list[int]) -> list[dict]:
    points = []
    for i, v in enumerate(values):
        concurrency, engines = (v, args.sweep_engines) if key == "concurrency" else (args.engines_concurrency, v)
        point = Point(tmp, mode="async", concurrency=concurrency, engines=engines,
                      gateways=args.gateways, train_s=args.sweep_train_s, time_scale=args.sweep_time_scale,
                      batch_groups=args.sweep_batch_groups, max_staleness=64, seed=100 + i)
        m = measure(point, warmup_s=args.sweep_warmup_s, window_s=args.sweep_window_s)
        rows = m.pop("trainer_rows")
        m["publish_s"] = statistics.fmean(r["seconds"]["publish"] for r in rows) if rows else None
        derive_point(m, rng)
        busiest = max(m["core_fraction"], key=m["core_fraction"].get)
        say(NAME, f"{key} {v}: {m['env_steps_per_s']:.1f} env steps/s of {m['offered_env_steps_per_s']:.1f} offered "
                  f"({m['achieved_fraction']:.0%}), gateway {m['gateway_cpu_ms_per_env_step']:.1f} ms CPU/step, "
                  f"redis {m['redis_commands_per_s']:.0f} cmd/s, busiest {busiest} "
                  f"{m['core_fraction'][busiest]:.0%} of a core")
        points.append(m)
    return points


def saturation(points: list[dict]) -> dict:
    """The first concurrency where the stack delivers under 80% of what the latencies offer, what was busy
    there (the busiest process, and every process together, fakes included, against the machine's cores),
    and, per real service, the first concurrency where it keeps 90% of a core busy."""
    knee = next((p for p in points if p["achieved_fraction"] < 0.8), None)
    per_service = {}
    for name in ("buffer", "weightsync", "redis", "gateway0"):
        per_service[name] = next((p["concurrency"] for p in points if p["core_fraction"].get(name, 0) >= 0.9), None)
    out = {"throughput_below_80pct_at": knee["concurrency"] if knee else None, "core_90pct_at": per_service}
    if knee:
        busiest = max(knee["core_fraction"], key=knee["core_fraction"].get)
        out |= {"busiest_at_knee": busiest, "busiest_cores_at_knee": knee["core_fraction"][busiest],
                "all_processes_cores_at_knee": sum(knee["core_fraction"].values()),
                "max_env_steps_per_s": max(p["env_steps_per_s"] for p in points)}
    return out


def replicas(points: list[dict], rng: random.Random) -> dict:
    """Replicas for CLUSTER_EPISODES episodes in real time, from CPU per env step where nothing saturated."""
    ok = [p for p in points if p["achieved_fraction"] >= 0.8] or points[:1]
    steps_per_s = offered_steps_per_s(CLUSTER_EPISODES, max(1, CLUSTER_EPISODES // 16), rng, 1.0)
    need = {}
    for name, key in (("gateway", "gateway_cpu_ms_per_env_step"), ("buffer", None), ("redis", None),
                      ("weightsync", None)):
        ms = statistics.fmean(p[key] if key else p["cpu_ms_per_env_step"].get(name, 0.0) for p in ok)
        cores = steps_per_s * ms / 1000
        need[name] = {"cpu_ms_per_env_step": ms, "cores": cores,
                      "replicas": max(1, math.ceil(cores / REPLICA_CORES))}
    need["redis_commands_per_s"] = statistics.fmean(p["redis_commands_per_s"] / p["env_steps_per_s"]
                                                    for p in ok) * steps_per_s
    return {"episodes": CLUSTER_EPISODES, "env_steps_per_s": steps_per_s, "replica_core_budget": REPLICA_CORES,
            **need}


def derive_point(p: dict, rng: random.Random) -> None:
    """A sweep point's offered rate, the share of it achieved, and its CPU per episode: per env step times
    the profile's steps per episode (episodes started in a window are few and unrepresentative while long
    ones are still running)."""
    _, steps = episode_duration_samples(PROFILE, rng, 4000, running_per_engine=1.0, with_steps=True)
    p["offered_env_steps_per_s"] = offered_steps_per_s(p["concurrency"], p["engines"], rng, p["time_scale"])
    p["achieved_fraction"] = p["env_steps_per_s"] / p["offered_env_steps_per_s"]
    p["cpu_ms_per_episode"] = {k: v * statistics.fmean(steps) for k, v in p["cpu_ms_per_env_step"].items()}


def derive(results: dict, rng: random.Random) -> None:
    """What follows from the measurements and the stated profile (offered rates, saturation, replicas, the
    ideal and the targets), in place: also run on a saved results file by ``--recompute``."""
    for key in ("concurrency", "engines"):
        for p in results.get(key, []):
            derive_point(p, rng)
    if results.get("concurrency"):
        results["saturation"] = saturation(results["concurrency"])
        results["cluster"] = replicas(results["concurrency"], rng)
    r = results.get("ratio")
    if r:
        engines = r["runs"]["sync"][0]["engines"]
        publish = statistics.fmean(m["publish_s"] for ms in r["runs"].values() for m in ms)
        r["ideal"] = ideal_speedup(r["batch_episodes"], r["batch_episodes"], engines, r["train_s"], publish, rng)
        for s in r["by_eta"].values():
            s["fraction_of_ideal"] = s["speedup"] / r["ideal"]["ideal"]
        r["fraction_of_ideal"] = r["speedup"] / r["ideal"]["ideal"]
        results["targets"] = {f"eta{s['eta']}": {"speedup_ge_2_4": s["speedup"] >= 2.4,
                                                 "fraction_of_ideal_ge_0_9": s["fraction_of_ideal"] >= 0.9}
                              for s in r["by_eta"].values()}


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    pts = results["concurrency"]
    xs = [p["concurrency"] for p in pts]
    ax = axes[0]
    ax.plot(xs, [p["offered_env_steps_per_s"] for p in pts], "k--", label="offered by the stated latencies")
    ax.plot(xs, [p["env_steps_per_s"] for p in pts], "o-", label="achieved")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent episodes")
    ax.set_ylabel("env steps/s")
    ax.set_title("one gateway, real time")
    ax.legend()
    ax = axes[1]
    for name in sorted({k for p in pts for k in p["core_fraction"]}):
        ax.plot(xs, [p["core_fraction"].get(name, 0) for p in pts], "o-", label=name)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent episodes")
    ax.set_ylabel("cores busy")
    ax.set_title("CPU per process")
    ax.legend(fontsize=7)
    ax = axes[2]
    r = results["ratio"]
    modes = ["sync", *r["by_eta"]]
    ax.bar([m.replace("async_", "async ") for m in modes], [r["trajectories_per_hour"][m] for m in modes],
           yerr=[r["trajectories_per_hour_se"][m] for m in modes], color=["grey"] + ["tab:blue"] * (len(modes) - 1))
    ax.axhline(r["trajectories_per_hour"]["sync"] * r["ideal"]["ideal"], color="tab:green", ls="--",
               label=f"ideal ({r['ideal']['ideal']:.2f}x)")
    ax.set_ylabel("trajectories/hour (stated time)")
    ax.set_title("balanced stages: " + ", ".join(f"eta {v['eta']} {v['speedup']:.2f}x" for v in r["by_eta"].values()))
    ax.legend()
    fig.suptitle(f"bench-scale, {results['machine']['cpus']} cores, {results['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts to run; with some, the others are "
                        "kept from the file at --out")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the ratio part (sync, then async at each eta)")
    parser.add_argument("--etas", default=f"{PROFILE['job']['max_staleness']},4",
                        help="ratio part: the asynchronous runs' staleness bounds; the first "
                        "(the paper's 2) is the headline")
    parser.add_argument("--min-steps", type=int, default=6, help="training steps each ratio run measures")
    parser.add_argument("--time-scale", type=float, default=3.0, help="ratio part: stated times divided by this")
    parser.add_argument("--engines", type=int, default=4, help="ratio part: endpoints")
    parser.add_argument("--train-s", type=float, default=None, help="ratio part: stated training step "
                        "(default: balanced, the mean episode's duration)")
    parser.add_argument("--concurrency", default="32,64,128,256,512,1024")
    parser.add_argument("--sweep-engines", type=int, default=16)
    parser.add_argument("--engine-counts", default="4,16,64")
    parser.add_argument("--engines-concurrency", type=int, default=128)
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--sweep-time-scale", type=float, default=1.0)
    parser.add_argument("--sweep-train-s", type=float, default=1.0, help="sweeps: a fast trainer, so that "
                        "rollout and the services, not training, bound throughput")
    parser.add_argument("--sweep-batch-groups", type=int, default=16)
    parser.add_argument("--sweep-warmup-s", type=float, default=20.0)
    parser.add_argument("--sweep-window-s", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "scale.json"))
    parser.add_argument("--recompute", default="", metavar="FILE",
                        help="run nothing: derive a saved results file's offered rates, saturation, replicas and "
                             "ideal again with this version's arithmetic, and write it back")
    args = parser.parse_args()
    if args.recompute:
        path = pathlib.Path(args.recompute)
        results = json.loads(path.read_text())
        derive(results, random.Random(args.seed))
        write(results, path)
        return 0
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts: choose from {','.join(PARTS)}")
    rng = random.Random(args.seed)
    out = pathlib.Path(args.out)
    results: dict = {"benchmark": NAME, "date": now_iso(), "machine": machine(),
                     "command": "python bench/scale.py " + " ".join(sys.argv[1:]), "profile": PROFILE,
                     "weightsync_concurrency": WEIGHTSYNC_CONCURRENCY, "part_runs": {}}
    if parts != set(PARTS) and out.exists():
        # A part rerun replaces only itself: the others, and when and how they ran, stay from the file.
        saved = json.loads(out.read_text())
        for part in set(PARTS) - parts:
            if part in saved:
                results[part] = saved[part]
                results["part_runs"][part] = saved.get("part_runs", {}).get(part) or {
                    k: saved.get(k) for k in ("date", "command", "minutes")}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = pathlib.Path(tmp)
        for part in PARTS:
            if part not in parts:
                continue
            part_started = time.monotonic()
            if part == "ratio":
                results["ratio"] = run_ratio(args, tmp, rng)
            elif part == "concurrency":
                results["concurrency"] = run_sweep(args, tmp, rng, "concurrency",
                                                   [int(x) for x in args.concurrency.split(",")])
            else:
                results["engines"] = run_sweep(args, tmp, rng, "engines",
                                               [int(x) for x in args.engine_counts.split(",")])
            results["part_runs"][part] = {"date": results["date"], "command": results["command"],
                                          "minutes": (time.monotonic() - part_started) / 60}
    results["minutes"] = (time.monotonic() - started) / 60
    derive(results, rng)
    write(results, out)
    return 0


def write(results: dict, out: pathlib.Path) -> None:
    parts = {k for k in PARTS if k in results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if {"ratio", "concurrency"} <= parts:
        plot(results, out.with_suffix(".png"))
    summary = {k: results[k] for k in ("benchmark", "date", "minutes") if k in results}
    if "ratio" in results:
        r = results["ratio"]
        summary |= {"speedup": round(r["speedup"], 3), "speedup_se": round(r["speedup_se"], 3),
                    "ideal": round(r["ideal"]["ideal"], 3), "fraction_of_ideal": round(r["fraction_of_ideal"], 3),
                    "by_eta": {f"eta{v['eta']}": {"speedup": round(v["speedup"], 3),
                                                  "fraction_of_ideal": round(v["fraction_of_ideal"], 3)}
                               for v in r["by_eta"].values()}}
    if "saturation" in results:
        summary |= {"saturation": results["saturation"],
                    "cluster_replicas": {k: v["replicas"] for k, v in results["cluster"].items()
                                         if isinstance(v, dict)}}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
