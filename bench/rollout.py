"""`make bench-rollout`: episodes/s and env steps/s of the rollout gateway, pooled against one group at a time.

A real envfleet (webgym-lite, one browser), buffer, Redis and one embedded
engine with the tiny shipped model. The same groups (task and seed sequence)
run through:

  one_group     a loop that runs one group at a time: its episodes together, the
                next group only when it is written (the synchronous, no-overlap baseline)
  pool_P        the everlasting pool with P episodes in flight (P = 4, 8, 16)

Also the fraction of wall time browsers spend executing Allocate/Step (summed
call time over session slots) and the fraction the engine has work (polled).
Prints one JSON object on its last line; writes bench/results/rollout.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import uuid

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncwebrl.common.blobstore import BlobStore  # noqa: E402
from asyncwebrl.common.grpcclient import aio_channel  # noqa: E402
from asyncwebrl.common.inference import InferenceClient  # noqa: E402
from asyncwebrl.common.localstack import EngineProcess, RedisServer, ServiceProcess  # noqa: E402
from asyncwebrl.common.models.tiny import SHIPPED  # noqa: E402
from asyncwebrl.common.redisclient import make_redis  # noqa: E402
from asyncwebrl.common.registry import Registry  # noqa: E402
from asyncwebrl.rollout.__main__ import load_policy_io  # noqa: E402
from asyncwebrl.rollout.config import RolloutConfig  # noqa: E402
from asyncwebrl.rollout.service import Gateway  # noqa: E402
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc, env_pb2, env_pb2_grpc  # noqa: E402

RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))
TOKEN = "bench-token"
PREFIX = "bench-rollout:"
SLOTS = 16


class TimedEnv:
    """envfleet's stub, with the time spent in Allocate and Step added up."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.busy_s = 0.0
        self.steps = 0

    async def _timed(self, call, request, **kw):
        started = time.perf_counter()
        try:
            return await call(request, **kw)
        finally:
            self.busy_s += time.perf_counter() - started

    async def Allocate(self, request, **kw):
        return await self._timed(self.stub.Allocate, request, **kw)

    async def Step(self, request, **kw):
        self.steps += 1
        return await self._timed(self.stub.Step, request, **kw)

    async def Release(self, request, **kw):
        return await self.stub.Release(request, **kw)

    async def ListTasks(self, request, **kw):
        return await self.stub.ListTasks(request, **kw)


async def engine_busy(url: str, stop: asyncio.Event, samples: list[int]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.get(url + "/model_info") as resp:
                samples.append(int((await resp.json())["running"] > 0))
            await asyncio.sleep(0.05)


async def run_once(args, stack, mode: str, pool: int) -> dict:
    job = f"{mode}-{uuid.uuid4().hex[:6]}"
    config = RolloutConfig(
        job_id=job, key_prefix=PREFIX, group_size=args.group_size, max_concurrent_episodes=pool,
        max_groups=args.groups, steps_easy=args.steps, steps_medium=args.steps, steps_hard=args.steps,
        max_new_tokens=args.tokens, task_source="webgym-lite", seed=args.seed, gate_poll_s=0.05,
    )
    await stack["buffer"].ConfigureJob(buffer_pb2.ConfigureJobRequest(
        job_id=job, batch_groups=1000, max_staleness=100, keep_zero_variance=True))
    # The engine registered under job "bench"; point this run's client at that registry entry.
    registry = Registry(stack["redis"], PREFIX, "bench", ttl_s=10)
    client = InferenceClient(registry, timeout_s=120)
    env = TimedEnv(stack["env"])
    gateway = Gateway(config, env, stack["buffer"], BlobStore(stack["redis"], PREFIX), client, stack["policy"])
    await gateway.load_tasks()
    stop, samples = asyncio.Event(), []
    poller = asyncio.create_task(engine_busy(stack["engine"].url, stop, samples))
    started = time.perf_counter()
    if mode == "one_group":
        for _ in range(args.groups):
            task = gateway.rng.choice(gateway.tasks)
            seed = gateway.rng.randrange(1 << 31)
            gateway.running_groups += 1
            gateway.waiting_episodes += config.group_size
            await gateway._group(task, seed)
    else:
        await gateway.run()
    wall = time.perf_counter() - started
    stop.set()
    await poller
    await client.close()
    episodes = args.groups * args.group_size
    return {
        "wall_s": wall,
        "episodes_per_s": episodes / wall,
        "env_steps_per_s": env.steps / wall,
        "browser_busy": env.busy_s / (wall * SLOTS),
        "engine_busy": statistics.mean(samples) if samples else 0.0,
        "groups_written": gateway.written_groups,
        "dropped": dict(gateway.dropped),
    }


async def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        tmp = pathlib.Path(tmp)
        server = RedisServer(tmp)
        env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": server.password}
        common = ["--redis-url", server.url, "--key-prefix", PREFIX, "--log-format", "text", "--log-level", "WARNING"]
        buffer = ServiceProcess("buffer", [*common, "--blob-release-grace-s", "0"], env, tmp / "buffer.log")
        buffer.wait_ready()
        # envfleet has no Redis: its screenshots go through the buffer.
        envfleet = ServiceProcess("envfleet", ["--buffer-target", buffer.target, "--log-format", "text",
                                               "--log-level", "WARNING", "--browsers", "1", "--contexts-per-browser",
                                               str(SLOTS), "--task-sources", "webgym-lite"],
                                  {"ASYNCWEBRL_AUTH_TOKEN": TOKEN}, tmp / "envfleet.log")
        engine = EngineProcess(["--model-path", str(SHIPPED / "qwen2_5_vl"), "--device", "cpu", "--max-batch-size",
                                "32", "--registry-redis-url", server.url, "--key-prefix", PREFIX, "--job-id", "bench",
                                "--log-level", "WARNING"], tmp / "engine.log",
                               env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": server.password})
        for svc in (envfleet, buffer, engine):
            svc.wait_ready()
        redis = make_redis(server.url, server.password)
        env_ch, buf_ch = aio_channel(envfleet.target, TOKEN), aio_channel(buffer.target, TOKEN, 64 << 20)
        stack = {"env": env_pb2_grpc.EnvServiceStub(env_ch), "buffer": buffer_pb2_grpc.BufferServiceStub(buf_ch),
                 "redis": redis, "engine": engine, "policy": load_policy_io(str(SHIPPED / "qwen2_5_vl"))}
        modes = [("one_group", args.group_size)] + [(f"pool_{p}", p) for p in args.pools]
        rounds: dict[str, list[dict]] = {m: [] for m, _ in modes}
        try:
            for r in range(args.rounds):
                order = modes[r % len(modes):] + modes[: r % len(modes)]
                for mode, pool in order:
                    rounds[mode].append(await run_once(args, stack, "one_group" if mode == "one_group" else "pool",
                                                       pool))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{m} {v[-1]['episodes_per_s']:.2f} ep/s" for m, v in rounds.items()), flush=True)
        finally:
            await env_ch.close()
            await buf_ch.close()
            await redis.aclose()
            for svc in (engine, buffer, envfleet):
                svc.stop()
            server.stop()
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("episodes_per_s", "env_steps_per_s",
                                                                 "browser_busy", "engine_busy")}
           for m, v in rounds.items()}
    base = med["one_group"]["episodes_per_s"]
    return {
        "benchmark": "rollout",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "make bench-rollout",
        "workload": {"tasks": "webgym-lite (all non-held-out templates)", "groups_per_run": args.groups,
                     "group_size": args.group_size, "step_limit": args.steps, "max_new_tokens": args.tokens,
                     "model": "tiny qwen2_5_vl, random weights (its actions are mostly invalid no-ops)",
                     "envfleet_slots": SLOTS, "rounds": args.rounds},
        "episodes_per_s": {m: round(v["episodes_per_s"], 3) for m, v in med.items()},
        "env_steps_per_s": {m: round(v["env_steps_per_s"], 2) for m, v in med.items()},
        "speedup_vs_one_group": {m: round(v["episodes_per_s"] / base, 2) for m, v in med.items()},
        "browser_busy_fraction": {m: round(v["browser_busy"], 3) for m, v in med.items()},
        "engine_busy_fraction": {m: round(v["engine_busy"], 3) for m, v in med.items()},
        "dropped": {m: [x["dropped"] for x in v] for m, v in rounds.items()},
    }


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["episodes_per_s"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    bars = a.bar(modes, [results["env_steps_per_s"][m] for m in modes],
                 color=["#999999"] + ["#1f77b4"] * (len(modes) - 1))
    for bar, m in zip(bars, modes):
        a.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{results['speedup_vs_one_group'][m]:.1f}x",
               ha="center", va="bottom", fontsize=9)
    a.set_ylabel("env steps/s")
    a.set_title("throughput")
    x = range(len(modes))
    b.bar([i - 0.2 for i in x], [results["browser_busy_fraction"][m] for m in modes], 0.4, label="browsers busy")
    b.bar([i + 0.2 for i in x], [results["engine_busy_fraction"][m] for m in modes], 0.4, label="engine busy")
    b.set_xticks(list(x), modes)
    b.set_ylim(0, 1)
    b.set_title("busy fraction of wall time")
    b.legend()
    fig.suptitle(f"rollout gateway, webgym-lite, tiny model, {results['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=8, help="groups per run")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="step limit of every task")
    parser.add_argument("--tokens", type=int, default=32, help="max_new_tokens per step")
    parser.add_argument("--pools", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "rollout.png")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
