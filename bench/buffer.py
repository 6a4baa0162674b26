"""`make bench-buffer`: the buffer service against a direct redis-py pipeline, in one run.

Realistic groups: 8 episodes x 10 steps, 1-2k prompt tokens per step (Qwen vocab),
100-200 output tokens with logprobs and versions, the decoded text, and two
100 KB screenshots per prompt (history window 1) deduplicated across steps: the
first screen is shared by the group, and a third of the steps leave the page
unchanged. Paths, interleaved in rounds so machine noise hits both alike:

  put service    PutGroup over gRPC (C calls in flight): validation, idempotency,
                 blob references, XADD, all in one Lua script
  put direct     serialise + XADD of the same bytes and fields, pipelined (the limit)
  get service    GetBatch (B groups, streamed) + Ack, the client parsing each group
  get direct     XREADGROUP + parse + XACK + XDEL, pipelined (the limit)
  blobs service  PutBlobs of new 100 KB screenshots, 16 per call
  blobs direct   the BlobStore's own Lua put, pipelined

Also: trajectory bytes over gRPC per step against the step's token ids, and Redis
memory per 1,000 stored steps. Prints one JSON object on its last line and writes
bench/results/buffer.json and buffer.png.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncwebrl.common.blobstore import BlobStore  # noqa: E402
from asyncwebrl.common.grpcclient import aio_channel  # noqa: E402
from asyncwebrl.common.keys import CONSUMER_GROUP, job_prefix  # noqa: E402
from asyncwebrl.common.localstack import RedisServer, ServiceProcess  # noqa: E402
from asyncwebrl.common.redisclient import make_redis  # noqa: E402
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc, env_pb2  # noqa: E402

RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))
TOKEN = "bench-token"
PREFIX = "bench:"
SHOT_BYTES = 100_000


def screenshot(rng: random.Random) -> bytes:
    return rng.randbytes(SHOT_BYTES)  # incompressible, like JPEG


def make_group(job: str, rng: random.Random, episodes: int, steps: int) -> tuple[buffer_pb2.Group, list[bytes]]:
    """A group and the distinct screenshots it references."""
    shots: dict[str, bytes] = {}

    def ref(data: bytes) -> env_pb2.ScreenshotRef:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        shots[sha] = data
        return env_pb2.ScreenshotRef(sha256=sha, width=1280, height=720, mime="image/jpeg", size_bytes=len(data))

    first = ref(screenshot(rng))
    eps = []
    for e in range(episodes):
        previous, current = first, first
        records = []
        for _ in range(steps):
            n_prompt, n_out = rng.randint(1000, 2000), rng.randint(100, 200)
            records.append(buffer_pb2.StepRecord(
                prompt_ids=[rng.randrange(151_000) for _ in range(n_prompt)],
                screenshots=[previous, current],
                output_ids=[rng.randrange(151_000) for _ in range(n_out)],
                logprobs=[-rng.random() * 3 for _ in range(n_out)],
                versions=[7] * n_out,
                text="x" * (n_out * 3),
                action='{"name": "left_click", "arguments": {"coordinate": [500, 300]}}',
            ))
            previous = current
            if rng.random() > 1 / 3:
                current = ref(screenshot(rng))
        eps.append(buffer_pb2.EpisodeRecord(episode_id=f"e{e}", steps=records, reward=float(e % 2),
                                            success=bool(e % 2), length=steps, finish_reason="answer"))
    group = buffer_pb2.Group(group_id=uuid.uuid4().hex, job_id=job, task="webgym-lite/shop-buy", seed=1,
                             difficulty="medium", episodes=eps, created_unix_ms=int(time.time() * 1000))
    return group, list(shots.values())


def fresh_copy(group: buffer_pb2.Group, job: str) -> buffer_pb2.Group:
    g = buffer_pb2.Group()
    g.CopyFrom(group)
    g.group_id = uuid.uuid4().hex
    g.job_id = job
    return g


def request_for(group: buffer_pb2.Group) -> buffer_pb2.PutGroupRequest:
    """Built untimed: ``PutGroupRequest(group=g)`` deep-copies the group (2-3 ms for
    500 KB), which a gateway avoids by filling ``request.group`` in place."""
    request = buffer_pb2.PutGroupRequest()
    request.group.CopyFrom(group)
    return request


async def put_service(stubs, requests, concurrency: int) -> float:
    """Serialisation is timed here as in the direct path (the stub does it).
    With several replicas, calls spread over them round-robin."""
    queue = list(requests)
    started = time.perf_counter()

    async def worker(stub):
        while queue:
            await stub.PutGroup(queue.pop())

    await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(concurrency * len(stubs))))
    return time.perf_counter() - started


async def put_direct(redis, job: str, groups, pipeline: int) -> float:
    """The same bytes and fields the service writes, without validation or references."""
    stream = job_prefix(PREFIX, job) + "groups"
    try:
        await redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    except Exception:  # noqa: BLE001 - exists from an earlier round
        pass
    started = time.perf_counter()
    for i in range(0, len(groups), pipeline):
        async with redis.pipeline(transaction=False) as pipe:
            for g in groups[i:i + pipeline]:
                pipe.xadd(stream, {"gid": g.group_id, "data": g.SerializeToString(), "minv": 7, "maxv": 7,
                                   "steps": 80, "zv": 0, "blobs": " ".join("0" * 64 for _ in range(40)),
                                   "tokens": 120000})
            await pipe.execute()
    return time.perf_counter() - started


async def get_service(stub, job: str, total: int, batch: int) -> tuple[float, int]:
    started, got, nbytes = time.perf_counter(), 0, 0
    while got < total:
        header, groups = None, []
        async for item in stub.GetBatch(buffer_pb2.GetBatchRequest(job_id=job, consumer="bench", groups=batch,
                                                                    current_version=7, max_staleness=2)):
            if item.WhichOneof("item") == "header":
                header = item.header
            else:
                groups.append(item.group)
                nbytes += item.group.ByteSize()
        assert header is not None and header.groups == len(groups) > 0, header
        await stub.Ack(buffer_pb2.AckRequest(job_id=job, batch_id=header.batch_id, consumer="bench"))
        got += len(groups)
    return time.perf_counter() - started, nbytes


async def get_direct(redis, job: str, total: int, batch: int) -> tuple[float, int]:
    stream = job_prefix(PREFIX, job) + "groups"
    started, got, nbytes = time.perf_counter(), 0, 0
    while got < total:
        reply = await redis.xreadgroup(CONSUMER_GROUP, "bench", {stream: ">"}, count=batch)
        entries = reply[0][1]
        for _, fields in entries:
            g = buffer_pb2.Group.FromString(fields[b"data"])
            nbytes += g.ByteSize()
        ids = [i for i, _ in entries]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, CONSUMER_GROUP, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()
        got += len(entries)
    return time.perf_counter() - started, nbytes


async def blobs_service(stub, job: str, shots: list[bytes], per_call: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(shots), per_call):
        await stub.PutBlobs(buffer_pb2.PutBlobsRequest(job_id=job, blobs=[
            buffer_pb2.BlobData(data=d, mime="image/jpeg", width=1280, height=720) for d in shots[i:i + per_call]]))
    return time.perf_counter() - started


async def blobs_direct(store: BlobStore, job: str, shots: list[bytes], per_call: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(shots), per_call):
        await store.put_many(job, [(d, "image/jpeg", 1280, 720) for d in shots[i:i + per_call]])
    return time.perf_counter() - started


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads); this process when ``pid`` is None."""
    if pid is None:
        return time.process_time()
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def used_memory(redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def run(args) -> dict:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="bench-buffer-") as tmp:
        tmp = pathlib.Path(tmp)
        server = RedisServer(tmp)
        # Replicas of the stateless service on the same Redis, as a Deployment would run them.
        svcs = [
            ServiceProcess(
                "buffer",
                ["--redis-url", server.url, "--key-prefix", PREFIX, "--blob-budget-bytes", "0",
                 "--blob-release-grace-s", "0", "--log-format", "text", "--log-level", "WARNING",
                 "--max-message-bytes", str(256 * 1024 * 1024)],
                {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": server.password},
                tmp / f"buffer-{i}.log",
            )
            for i in range(args.replicas)
        ]
        # --baseline-src: one more replica running the buffer package found in that folder
        # (e.g. a copy of the code before a change), measured in the same rounds.
        baseline = None
        if args.baseline_src:
            baseline = ServiceProcess(
                "buffer", svcs[0]._args,
                {**svcs[0]._env, "PYTHONPATH": os.pathsep.join(filter(None, [args.baseline_src,
                                                                              os.environ.get("PYTHONPATH")]))},
                tmp / "buffer-baseline.log",
            )
        for svc in svcs + ([baseline] if baseline else []):
            svc.wait_ready()
        redis = make_redis(server.url, server.password, timeout_s=60)
        store = BlobStore(redis, PREFIX)
        channels = [aio_channel(svc.target, TOKEN, max_message_bytes=256 * 1024 * 1024) for svc in svcs]
        stubs = [buffer_pb2_grpc.BufferServiceStub(ch) for ch in channels]
        stub = stubs[0]
        if baseline:
            channels.append(aio_channel(baseline.target, TOKEN, max_message_bytes=256 * 1024 * 1024))
            baseline_stub = buffer_pb2_grpc.BufferServiceStub(channels[-1])
        try:
            print(f"building {args.templates} template groups ...", flush=True)
            templates = [make_group("t", rng, args.episodes, args.steps) for _ in range(args.templates)]
            steps_per_group = args.episodes * args.steps
            group_bytes = statistics.mean(request_for(g).ByteSize() for g, _ in templates)
            tokens_per_step = statistics.mean(
                len(s.prompt_ids) + len(s.output_ids) for g, _ in templates for e in g.episodes for s in e.steps)
            shots_per_group = statistics.mean(len(s) for _, s in templates)

            rounds: dict[str, list[float]] = {k: [] for k in
                                              ("put_service", "put_direct", "put_service_replicas", "get_service",
                                               "get_direct", "blobs_service", "blobs_direct") if args.replicas > 1
                                              or k != "put_service_replicas"}
            memory = {}
            cpu_ms: dict[str, list[float]] = {}  # CPU ms per group, by path and process
            for r in range(args.rounds):
                job_s, job_d = f"svc{r}", f"dir{r}"
                svc_groups, dir_groups = [], []
                # Screenshots first, as envfleet writes them before the gateway's PutGroup.
                for job in (job_s, job_d):
                    await stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=7))
                for i in range(args.groups):
                    g, shots = templates[i % len(templates)]
                    svc_groups.append(request_for(fresh_copy(g, job_s)))
                    dir_groups.append(fresh_copy(g, job_d))
                    # A fresh job per round, so each group's screenshots are new to Redis.
                    await store.put_many(job_s, [(d, "image/jpeg", 1280, 720) for d in shots])
                replica_job = f"rep{r}"
                await stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=replica_job, version=7))
                replica_groups = []
                for i in range(args.groups if args.replicas > 1 else 0):
                    g, shots = templates[i % len(templates)]
                    replica_groups.append(request_for(fresh_copy(g, replica_job)))
                    await store.put_many(replica_job, [(d, "image/jpeg", 1280, 720) for d in shots])
                order = [("service", put_service([stub], svc_groups, args.concurrency)),
                         ("direct", put_direct(redis, job_d, dir_groups, args.pipeline))]
                if replica_groups:
                    order.append(("service_replicas", put_service(stubs, replica_groups, args.concurrency)))
                if baseline:
                    job_b = f"base{r}"
                    await stub.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job_b, version=7))
                    base_groups = []
                    for i in range(args.groups):
                        g, shots = templates[i % len(templates)]
                        base_groups.append(request_for(fresh_copy(g, job_b)))
                        await store.put_many(job_b, [(d, "image/jpeg", 1280, 720) for d in shots])
                    order.append(("baseline", put_service([baseline_stub], base_groups, args.concurrency)))
                    rounds.setdefault("put_baseline", [])
                    # Every path takes every place in the order equally often.
                    order = order[r % len(order):] + order[:r % len(order)]
                elif r % 2:
                    order.reverse()
                for name, coro in order:
                    before = await used_memory(redis)
                    pids = {"client": None, "buffer": (baseline if name == "baseline" else svcs[0]).proc.pid,
                            "redis": server.proc.pid}
                    cpu_before = {k: cpu_s(pid) for k, pid in pids.items()}
                    elapsed = await coro
                    rounds[f"put_{name}"].append(args.groups / elapsed)
                    for k, pid in pids.items():
                        cpu_ms.setdefault(f"put_{name}_{k}", []).append(
                            (cpu_s(pid) - cpu_before[k]) / args.groups * 1000)
                    if name == "service":
                        memory.setdefault("stream_bytes_per_1000_steps", []).append(
                            (await used_memory(redis) - before) / (args.groups * steps_per_group) * 1000)
                if args.put_only:
                    print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                        f"{k} {v[-1]:.0f}/s" for k, v in rounds.items() if v), flush=True)
                    continue
                # Drain what the replica path stored, so the streams stay the same length round to round.
                if replica_groups:
                    await get_service(stub, replica_job, args.groups, args.batch)
                order = [("service", get_service(stub, job_s, args.groups, args.batch)),
                         ("direct", get_direct(redis, job_d, args.groups, args.batch))]
                if r % 2:
                    order.reverse()
                for name, coro in order:
                    elapsed, _ = await coro
                    rounds[f"get_{name}"].append(args.groups / elapsed)
                shots = [screenshot(rng) for _ in range(args.blobs)]
                more = [screenshot(rng) for _ in range(args.blobs)]
                order = [("service", blobs_service(stub, f"bs{r}", shots, 16)),
                         ("direct", blobs_direct(store, f"bd{r}", more, 16))]
                if r % 2:
                    order.reverse()
                for name, coro in order:
                    rounds[f"blobs_{name}"].append(args.blobs / await coro)
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {v[-1]:.0f}/s" for k, v in rounds.items()), flush=True)
        finally:
            for ch in channels:
                await ch.close()
            await redis.aclose()
            for svc in svcs + ([baseline] if baseline else []):
                svc.stop()
            server.stop()

    if args.put_only:
        return put_only_results(args, rounds, cpu_ms)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    mb = group_bytes / 1e6
    # What a trainer holds per step as int32 arrays, against what one step costs on the wire.
    per_step_wire = group_bytes / steps_per_group
    token_id_bytes = 4 * tokens_per_step
    return {
        "benchmark": "buffer",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "make bench-buffer",
        "workload": {
            "episodes_per_group": args.episodes, "steps_per_episode": args.steps, "groups_per_round": args.groups,
            "rounds": args.rounds, "put_concurrency": args.concurrency, "direct_pipeline": args.pipeline,
            "batch_groups": args.batch, "group_bytes": round(group_bytes), "tokens_per_step": round(tokens_per_step),
            "distinct_screenshots_per_group": round(shots_per_group, 1), "screenshot_bytes": SHOT_BYTES,
            "redis": "7, appendonly yes, appendfsync everysec (as shipped)",
        },
        "put_groups_per_s": {"service": round(med["put_service"], 1), "direct": round(med["put_direct"], 1)},
        "put_mb_per_s": {"service": round(med["put_service"] * mb, 1), "direct": round(med["put_direct"] * mb, 1)},
        "put_ratio": round(med["put_service"] / med["put_direct"], 3),
        **ratio_stats(rounds["put_service"], rounds["put_direct"]),
        "replicas": args.replicas,
        "put_groups_per_s_replicas": round(med.get("put_service_replicas", med["put_service"]), 1),
        "put_ratio_replicas": round(med.get("put_service_replicas", med["put_service"]) / med["put_direct"], 3),
        "get_groups_per_s": {"service": round(med["get_service"], 1), "direct": round(med["get_direct"], 1)},
        "get_mb_per_s": {"service": round(med["get_service"] * mb, 1), "direct": round(med["get_direct"] * mb, 1)},
        "get_ratio": round(med["get_service"] / med["get_direct"], 3),
        "blob_puts_per_s": {"service": round(med["blobs_service"], 1), "direct": round(med["blobs_direct"], 1)},
        "blob_ratio": round(med["blobs_service"] / med["blobs_direct"], 3),
        "wire_bytes_per_step": round(per_step_wire),
        "token_id_bytes_per_step": round(token_id_bytes),
        "wire_within_token_ids_plus_1kb": per_step_wire <= token_id_bytes + 1024,
        "redis_stream_bytes_per_1000_steps": round(statistics.median(memory["stream_bytes_per_1000_steps"])),
        # Groups copied from templates share screenshots here; real groups do not, so count per group.
        "redis_blob_bytes_per_1000_steps": round(shots_per_group * SHOT_BYTES / steps_per_group * 1000),
        "rounds_raw": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
        "targets": {"put_ratio": 0.5, "get_ratio": 0.5},
    }


def ratio_stats(service: list[float], direct: list[float]) -> dict:
    """The service/direct ratio per round (both paths ran back to back in it, so
    machine noise hits them alike), its mean and the standard error of that mean."""
    import math

    ratios = [s / d for s, d in zip(service, direct)]
    n = len(ratios)
    sem = statistics.stdev(ratios) / n ** 0.5 if n > 1 else float("nan")
    # Ratios are skewed on a noisy machine: the geometric mean, with its standard error from the logs.
    logs = [math.log(x) for x in ratios]
    gm = math.exp(statistics.mean(logs))
    gm_se = gm * statistics.stdev(logs) / n ** 0.5 if n > 1 else float("nan")
    return {"put_ratio_per_round_mean": round(statistics.mean(ratios), 3), "put_ratio_sem": round(sem, 3),
            "put_ratio_geomean": round(gm, 3), "put_ratio_geomean_se": round(gm_se, 3),
            "put_ratio_per_round": [round(x, 3) for x in ratios]}


def put_only_results(args, rounds: dict, cpu_ms: dict) -> dict:
    """``--put-only``: PutGroup (one replica) against the direct pipeline, nothing else."""
    med = {k: statistics.median(v) for k, v in rounds.items() if v}
    return {
        "benchmark": "buffer-put",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workload": {"episodes_per_group": args.episodes, "steps_per_episode": args.steps,
                     "groups_per_round": args.groups, "rounds": args.rounds, "put_concurrency": args.concurrency,
                     "direct_pipeline": args.pipeline},
        "put_groups_per_s": {"service": round(med["put_service"], 1), "direct": round(med["put_direct"], 1)},
        "put_ratio": round(med["put_service"] / med["put_direct"], 3),
        **ratio_stats(rounds["put_service"], rounds["put_direct"]),
        **({f"baseline_{k}": v for k, v in ratio_stats(rounds["put_baseline"], rounds["put_direct"]).items()}
           | {f"service_over_baseline_{k}": v for k, v in ratio_stats(rounds["put_service"],
                                                                      rounds["put_baseline"]).items()}
           if rounds.get("put_baseline") else {}),
        # CPU per group is far steadier than throughput on a shared machine: where the time goes.
        "cpu_ms_per_group_median": {k: round(statistics.median(v), 2) for k, v in cpu_ms.items()},
        "rounds_raw": {k: [round(x, 1) for x in v] for k, v in rounds.items() if v},
    }


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    put = results["put_groups_per_s"]
    labels = ["PutGroup\n1 replica", f"PutGroup\n{results['replicas']} replicas", "GetBatch+Ack", "PutBlobs"]
    service = [put["service"], results["put_groups_per_s_replicas"], results["get_groups_per_s"]["service"],
               results["blob_puts_per_s"]["service"]]
    direct = [put["direct"], put["direct"], results["get_groups_per_s"]["direct"],
              results["blob_puts_per_s"]["direct"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], direct, 0.4, label="direct redis-py pipeline (limit)", color="#999999")
    ax.bar([x + 0.2 for x in xs], service, 0.4, label="buffer service (gRPC)", color="#1f77b4")
    for x, sv, d in zip(xs, service, direct):
        ax.text(x + 0.2, sv, f"{sv / d:.0%}", ha="center", va="bottom", fontsize=9)
    ax.set_yscale("log")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("items/s (groups of 80 steps; blobs of 100 KB)")
    ax.set_title(f"buffer throughput, {results['machine']['cpus']} cores, {results['date'][:10]}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=96, help="groups per path per round")
    parser.add_argument("--rounds", type=int, default=16,
                        help="rounds per path; the PutGroup goal is judged on the per-round ratios' geometric mean")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--templates", type=int, default=4, help="distinct groups to copy from")
    parser.add_argument("--concurrency", type=int, default=4, help="PutGroup calls in flight")
    parser.add_argument("--pipeline", type=int, default=16, help="XADDs per direct pipeline")
    parser.add_argument("--batch", type=int, default=16, help="groups per GetBatch")
    parser.add_argument("--blobs", type=int, default=256, help="screenshots per blob path per round")
    parser.add_argument("--replicas", type=int, default=2, help="buffer replicas for the scaled PutGroup path")
    parser.add_argument("--baseline-src", default="",
                        help="with --put-only: also run a buffer from the asyncwebrl/buffer package in this folder")
    parser.add_argument("--put-only", action="store_true",
                        help="only PutGroup (one replica) against the direct pipeline; prints, writes no results")
    args = parser.parse_args()
    if args.put_only:
        args.replicas = 1
    results = asyncio.run(run(args))
    if args.put_only:
        print(json.dumps(results))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "buffer.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "buffer.png")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
