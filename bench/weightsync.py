"""`make bench-weightsync`: time from Publish to every endpoint serving the version, for 1, 2 and 4
engines and checkpoints of ~20 MB and ~400 MB, beside one engine loading the same checkpoint alone.

Real processes: redis-server, weightsync, embedded engines on the CPU registered for the job. The
checkpoints are Qwen2.5-VL models of the shipped tiny shape made wider and deeper (random weights,
fp32 safetensors). "single load" is ``/update_weights_from_disk`` on one engine with nothing else
running: the floor a parallel fan-out can approach. A Publish includes weightsync's verification
(sha256 of every file), reported separately. "parallel load" sends the same update to all n
engines at once without weightsync: what n simultaneous loads cost on this machine. Each point
is the median of ``--repeats`` publishes.
Prints one JSON object on its last line and writes bench/results/weightsync.json and weightsync.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))
sys.path.insert(0, str(ROOT))

SIZES = {  # name -> text-model dimensions (vision tower as shipped)
    "20MB": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=5, num_attention_heads=16),
    "400MB": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=7, num_attention_heads=64),
}
PREFIX = "bench-ws:"
TOKEN = "bench-token"
KEY = "bench-key"


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def get(url: str, path: str) -> dict:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="weightsync --concurrency")
    args = parser.parse_args()

    from asyncwebrl.common.grpcclient import channel
    from asyncwebrl.common.localstack import EngineProcess, RedisServer, ServiceProcess
    from asyncwebrl.common.models.tiny import write_tiny
    from asyncwebrl.common.weights import version_dir
    from asyncwebrl.v1 import weightsync_pb2, weightsync_pb2_grpc
    from tests.helpers import wait_until
    from tests.weightsync.conftest import make_version

    results: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "redis").mkdir()
        redis = RedisServer(tmp / "redis")
        env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis.password,
               "ASYNCWEBRL_ENGINE_API_KEY": KEY}
        ws = ServiceProcess("weightsync", ["--redis-url", redis.url, "--key-prefix", PREFIX, "--log-format", "text",
                                           "--concurrency", str(args.concurrency), "--checkpoint-roots", str(tmp),
                                           "--reconcile-interval-s", "5"], env, tmp / "weightsync.log")
        ws.wait_ready()
        stub = weightsync_pb2_grpc.WeightSyncServiceStub(channel(ws.target, TOKEN))
        try:
            for size in args.sizes:
                print(f"{size}: writing the checkpoints", file=sys.stderr, flush=True)
                base = write_tiny("qwen2_5_vl", tmp / size / "base", **SIZES[size])
                ckpt = tmp / size / "ckpt"
                version = 0
                nbytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
                row: dict = {"bytes": nbytes, "publish_s": {}, "verify_s": {}, "publish_runs_s": {},
                             "parallel_load_s": {}}
                for n in sorted(args.engines):
                    job = f"{size.lower()}-n{n}"
                    engines = [EngineProcess(
                        ["--model-path", str(base), "--model-roots", str(tmp), "--device", "cpu",
                         "--registry-redis-url", redis.url, "--key-prefix", PREFIX, "--job-id", job,
                         "--endpoint-id", f"e{i}", "--heartbeat-s", "0.5"], tmp / f"{job}-e{i}.log",
                        env={"ASYNCWEBRL_API_KEY": KEY, "ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": redis.password})
                        for i in range(n)]
                    try:
                        for e in engines:
                            e.wait_ready(300)
                        wait_until(lambda job=job, n=n: len([x for x in stub.Status(weightsync_pb2.StatusRequest(
                            job_id=job)).endpoints if x.fresh]) == n, 60, f"{n} engines registered")
                        if n == 1:  # the floor: one engine loading alone, no weightsync in between
                            singles = []
                            for _ in range(args.repeats):
                                version += 1
                                path = make_version(ckpt, version, base)
                                started = time.monotonic()
                                post(engines[0].url, "/update_weights_from_disk",
                                     {"model_path": str(path), "weight_version": str(version)})
                                singles.append(time.monotonic() - started)
                            row["single_load_s"] = statistics.median(singles)
                            row["single_load_runs_s"] = singles
                        # This machine's own floor for n loads at once: every engine told directly, no
                        # weightsync, no verification. Publish can only approach it.
                        together = []
                        for _ in range(args.repeats):
                            version += 1
                            path = make_version(ckpt, version, base)
                            started = time.monotonic()
                            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                                body = {"model_path": str(path), "weight_version": str(version)}
                                list(pool.map(lambda e, b=body: post(e.url, "/update_weights_from_disk", b), engines))
                            together.append(time.monotonic() - started)
                        row["parallel_load_s"][str(n)] = statistics.median(together)
                        runs, verify = [], []
                        for r in range(args.repeats):
                            version += 1
                            path = make_version(ckpt, version, base)
                            started = time.monotonic()
                            reply = stub.Publish(weightsync_pb2.PublishRequest(job_id=job, version=version,
                                                                               path=str(path)), timeout=1200)
                            elapsed = time.monotonic() - started
                            assert len(reply.results) == n and all(x.ok for x in reply.results), reply
                            assert all(get(e.url, "/model_info")["weight_version"] == str(version) for e in engines)
                            runs.append(elapsed)
                            verify.append(reply.verify_seconds)
                            print(f"{size} x{n} engines, publish {r + 1}/{args.repeats}: {elapsed:.2f}s "
                                  f"(verify {reply.verify_seconds:.2f}s)", file=sys.stderr, flush=True)
                        row["publish_s"][str(n)] = statistics.median(runs)
                        row["verify_s"][str(n)] = statistics.median(verify)
                        row["publish_runs_s"][str(n)] = runs
                    finally:
                        for e in engines:
                            e.stop()
                    for v in range(1, version - 1):  # keep the disk small
                        shutil.rmtree(version_dir(ckpt, v), ignore_errors=True)
                top = str(max(args.engines))
                row["fanout_over_single"] = row["publish_s"][top] / row["single_load_s"]
                row["parallel_load_over_single"] = row["parallel_load_s"][top] / row["single_load_s"]
                row["fanout_over_parallel_load"] = row["publish_s"][top] / row["parallel_load_s"][top]
                row["fanout_minus_verify_over_single"] = (row["publish_s"][top] - row["verify_s"][top]) / \
                    row["single_load_s"]
                results["sizes"][size] = row
        finally:
            ws.stop()
            redis.stop()
    top = str(max(args.engines))
    results |= {
        "benchmark": "weightsync",
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch_threads": torch.get_num_threads(), "gpu": None},
        "target": f"fan-out to {top} <= 1.5x a single load",
        "fanout_over_single": {s: round(r["fanout_over_single"], 3) for s, r in results["sizes"].items()},
        "target_met": {s: r["fanout_over_single"] <= 1.5 for s, r in results["sizes"].items()},
        # How far the machine itself is from the target (n loads on shared cores), and what
        # weightsync adds on top of it.
        "parallel_load_over_single": {s: round(r["parallel_load_over_single"], 3) for s, r in results["sizes"].items()},
        "fanout_over_parallel_load": {s: round(r["fanout_over_parallel_load"], 3) for s, r in results["sizes"].items()},
        "command": "make bench-weightsync",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weightsync.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "weightsync.png")
    print(json.dumps(results))
    return 0


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        row = results["sizes"][size]
        labels = ["single load"] + [f"publish x{n}" for n in row["publish_s"]]
        values = [row["single_load_s"]] + list(row["publish_s"].values())
        verify = [0.0] + list(row["verify_s"].values())
        bars = ax.bar(labels, [v - w for v, w in zip(values, verify, strict=True)], color="#1f77b4",
                      label="load (pause, update, continue)")
        ax.bar(labels, verify, bottom=[v - w for v, w in zip(values, verify, strict=True)], color="#ff7f0e",
               label="verify (sha256)")
        ax.plot([f"publish x{n}" for n in row["parallel_load_s"]], list(row["parallel_load_s"].values()), "k_",
                ms=28, mew=2, label="same loads sent directly (no weightsync)")
        ax.axhline(1.5 * row["single_load_s"], color="grey", ls="--", lw=1, label="1.5x single load")
        for bar, v in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f}s", ha="center", va="bottom", fontsize=9)
        ax.set_title(f"{size} checkpoint ({row['bytes'] / 1e6:.0f} MB), {results['machine']['cpus']} CPU cores")
        ax.set_ylabel("seconds (median)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
