"""`make bench-weightsync`: one engine loading a checkpoint alone, against getting it to 4 engines by
disk fan-out and by broadcast, for checkpoints of ~20 MB and ~400 MB.

Real processes: redis-server, two weightsync processes on the same Redis and job (one ``--transport
disk``, one ``--transport broadcast`` over gloo on the CPU), four embedded engines on the CPU registered
for the job. The checkpoints are Qwen2.5-VL models of the shipped tiny shape made wider and deeper
(random weights, fp32 safetensors), a new version for every timed step, written just before it. The
variants, timed to every engine serving the version:

* ``single``: ``/update_weights_from_disk`` on one engine, the others idle: the floor to approach.
* ``disk4``: ``Publish`` to the disk weightsync: every engine loads the checkpoint itself.
* ``broadcast4``: ``Publish`` to the broadcast weightsync: it reads the checkpoint once and, as rank 0 of a
  gloo group with the 4 engines (``update_weights_from_distributed``), broadcasts the tensors. The group is
  formed by one untimed warm-up publish per size, whose time is reported apart. After each timed publish
  the engines' counters are read: it counts as a broadcast only if every engine's distributed updates rose
  by one and its disk loads did not; otherwise it is reported as a fallback and left out of the stats.
* ``direct4``: the same disk update sent to all 4 engines at once, no weightsync: what 4 simultaneous
  loads cost on this machine (``--no-direct`` skips it).

A Publish includes weightsync's verification (sha256 of every file), reported separately. The variants
run interleaved, repeat by repeat, in an order rotated each repeat, so background load hits them alike.
Per variant: median and standard error (of the mean) over ``--repeats``; the ratios to ``single`` are
taken per repeat, then their mean and standard error. The publishes to 1 and 2 engines of earlier
versions of this benchmark are gone: they need engine sets of their own, which doubled the run.
Prints one JSON object on its last line and writes bench/results/weightsync.json and weightsync.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
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
N = 4  # engines
TARGET = 1.5  # broadcast to N within this many single loads
VARIANTS = ("single", "disk4", "broadcast4", "direct4")
BCAST_OK = 'asyncwebrl_engine_distributed_weight_updates_total{result="ok"}'
DISK_LOADS = "asyncwebrl_engine_weight_updates_total"
GROUP_BUILDS = 'asyncwebrl_weightsync_broadcast_group_builds_total{'
WS_BROADCAST_S = "asyncwebrl_weightsync_broadcast_seconds_sum"  # read, pause, broadcast, continue
RECEIVE_S = "asyncwebrl_engine_broadcast_receive_seconds_sum"  # an engine receiving the tensors


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def get(url: str, path: str) -> dict:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def counter(url: str, name: str) -> float:
    """Sum of the samples of a Prometheus counter whose line starts with ``name`` (labels included)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith(name + "_created")
               and "_created{" not in line)


def stats(xs: list[float]) -> dict:
    """Median, mean and standard error of the mean (0 with one sample)."""
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return {"median": statistics.median(xs), "mean": statistics.fmean(xs), "se": se, "n": len(xs), "runs": xs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="weightsync --concurrency (disk)")
    parser.add_argument("--bucket-mb", type=int, default=0, help="weightsync --broadcast-bucket-mb")
    parser.add_argument("--no-direct", action="store_true", help="skip direct4 (4 loads sent with no weightsync)")
    args = parser.parse_args()
    variants = [v for v in VARIANTS if not (args.no_direct and v == "direct4")]

    from asyncwebrl.common.grpcclient import channel
    from asyncwebrl.common.localstack import EngineProcess, RedisServer, ServiceProcess
    from asyncwebrl.common.models.tiny import write_tiny
    from asyncwebrl.common.weights import version_dir
    from asyncwebrl.v1 import weightsync_pb2, weightsync_pb2_grpc
    from tests.helpers import wait_until
    from tests.weightsync.conftest import make_version

    began = time.monotonic()
    results: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "redis").mkdir()
        redis = RedisServer(tmp / "redis")
        env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis.password,
               "ASYNCWEBRL_ENGINE_API_KEY": KEY}
        common = ["--redis-url", redis.url, "--key-prefix", PREFIX, "--log-format", "text", "--checkpoint-roots",
                  str(tmp), "--reconcile-interval-s", "5", "--concurrency", str(args.concurrency)]
        services = {
            "disk": ServiceProcess("weightsync", [*common, "--transport", "disk"], env, tmp / "ws-disk.log"),
            "broadcast": ServiceProcess("weightsync", [
                *common, "--transport", "broadcast", "--broadcast-host", "127.0.0.1", "--broadcast-backend", "gloo",
                "--broadcast-timeout-s", "300", "--broadcast-bucket-mb", str(args.bucket_mb)],
                env, tmp / "ws-broadcast.log")}
        for ws in services.values():
            ws.wait_ready()
        stubs = {k: weightsync_pb2_grpc.WeightSyncServiceStub(channel(ws.target, TOKEN)) for k, ws in services.items()}
        bcast_http = f"http://127.0.0.1:{services['broadcast'].http_port}"
        try:
            for size in args.sizes:
                print(f"{size}: writing the checkpoints", file=sys.stderr, flush=True)
                base = write_tiny("qwen2_5_vl", tmp / size / "base", **SIZES[size])
                ckpt = tmp / size / "ckpt"
                version = 0
                nbytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
                job = f"{size.lower()}-n{N}"
                engines = [EngineProcess(
                    ["--model-path", str(base), "--model-roots", str(tmp), "--device", "cpu",
                     "--registry-redis-url", redis.url, "--key-prefix", PREFIX, "--job-id", job,
                     "--endpoint-id", f"e{i}", "--heartbeat-s", "0.5"], tmp / f"{job}-e{i}.log",
                    env={"ASYNCWEBRL_API_KEY": KEY, "ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": redis.password})
                    for i in range(N)]

                def counts() -> list[tuple[float, float]]:
                    return [(counter(e.url, BCAST_OK), counter(e.url, DISK_LOADS)) for e in engines]

                def receive_s() -> float:
                    """Seconds the engines spent receiving broadcasts so far, mean over the engines."""
                    return statistics.fmean(counter(e.url, RECEIVE_S) for e in engines)

                def new_version() -> pathlib.Path:
                    nonlocal version
                    version += 1
                    for v in range(1, version - 2):  # keep the disk small
                        shutil.rmtree(version_dir(ckpt, v), ignore_errors=True)
                    return make_version(ckpt, version, base)

                def publish(kind: str, path: pathlib.Path) -> tuple[float, float]:
                    started = time.monotonic()
                    reply = stubs[kind].Publish(weightsync_pb2.PublishRequest(job_id=job, version=version,
                                                                              path=str(path)), timeout=1200)
                    elapsed = time.monotonic() - started
                    assert len(reply.results) == N and all(x.ok for x in reply.results), reply
                    return elapsed, reply.verify_seconds

                def direct(path: pathlib.Path, targets) -> float:
                    body = {"model_path": str(path), "weight_version": str(version)}
                    started = time.monotonic()
                    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
                        list(pool.map(lambda e: post(e.url, "/update_weights_from_disk", body), targets))
                    return time.monotonic() - started

                row: dict = {"bytes": nbytes, "engines": N}
                try:
                    for e in engines:
                        e.wait_ready(300)
                    wait_until(lambda: len([x for x in stubs["disk"].Status(weightsync_pb2.StatusRequest(
                        job_id=job)).endpoints if x.fresh]) == N, 60, f"{N} engines registered")
                    # Untimed warm-up: forms the broadcast group (its time reported apart).
                    path = new_version()
                    before, builds = counts(), counter(bcast_http, GROUP_BUILDS)
                    warm_s, warm_verify = publish("broadcast", path)
                    warm_ok = [(b + 1, d) for b, d in before] == counts()
                    assert counter(bcast_http, GROUP_BUILDS) == builds + 1, "the warm-up formed one group"
                    print(f"{size}: warm-up broadcast publish (group formation) {warm_s:.2f}s, by broadcast: "
                          f"{warm_ok}", file=sys.stderr, flush=True)
                    runs: dict[str, list[float]] = {v: [] for v in variants}
                    verify: dict[str, list[float]] = {"disk4": [], "broadcast4": []}
                    fallbacks: list[dict] = []
                    parts: dict[str, list[float]] = {"broadcast_phase": [], "engine_receive": []}
                    rebuilds = 0
                    per_repeat: list[dict[str, float]] = []
                    for r in range(args.repeats):
                        order = variants[r % len(variants):] + variants[:r % len(variants)]
                        this: dict[str, float] = {}
                        for variant in order:
                            path = new_version()
                            if variant == "single":
                                this[variant] = direct(path, engines[:1])
                            elif variant == "direct4":
                                this[variant] = direct(path, engines)
                            elif variant == "disk4":
                                this[variant], v_s = publish("disk", path)
                                verify["disk4"].append(v_s)
                            else:
                                before, builds = counts(), counter(bcast_http, GROUP_BUILDS)
                                ws_s, rx_s = counter(bcast_http, WS_BROADCAST_S), receive_s()
                                elapsed, v_s = publish("broadcast", path)
                                after = counts()
                                rebuilt = counter(bcast_http, GROUP_BUILDS) - builds
                                parts["broadcast_phase"].append(counter(bcast_http, WS_BROADCAST_S) - ws_s)
                                parts["engine_receive"].append(receive_s() - rx_s)
                                rebuilds += rebuilt > 0
                                if after == [(b + 1, d) for b, d in before]:
                                    this[variant] = elapsed
                                    verify["broadcast4"].append(v_s)
                                else:
                                    fallbacks.append({"repeat": r, "seconds": elapsed, "before": before,
                                                      "after": after, "group_rebuilt": bool(rebuilt)})
                            assert all(get(e.url, "/model_info")["weight_version"] == str(version)
                                       for e in (engines[:1] if variant == "single" else engines))
                        per_repeat.append(this)
                        for v in this:
                            runs[v].append(this[v])
                        print(f"{size} repeat {r + 1}/{args.repeats}: " + ", ".join(
                            f"{v} {this[v]:.3f}s" if v in this else f"{v} FALLBACK" for v in order),
                            file=sys.stderr, flush=True)
                    for v in range(1, version + 1):
                        shutil.rmtree(version_dir(ckpt, v), ignore_errors=True)
                finally:
                    for e in engines:
                        e.stop()
                row["variants"] = {v: stats(xs) for v, xs in runs.items() if xs}
                row["verify_s"] = {v: stats(xs) for v, xs in verify.items() if xs}
                row["ratios"] = {}
                for v in ("broadcast4", "disk4", "direct4"):
                    xs = [p[v] / p["single"] for p in per_repeat if v in p and "single" in p]
                    if xs:
                        row["ratios"][f"{v}_over_single"] = stats(xs)
                b = row["variants"].get("broadcast4")
                steady = b["median"] if b else None
                row["broadcast"] = {
                    "warmup_publish_s": warm_s, "warmup_verify_s": warm_verify, "warmup_by_broadcast": warm_ok,
                    # The warm-up does what a timed publish does, plus forming the group.
                    "group_formation_s_est": warm_s - steady if steady is not None else None,
                    "s_per_gb": steady / (nbytes / 1e9) if steady is not None else None,
                    "s_per_gb_without_verify": (steady - row["verify_s"]["broadcast4"]["median"]) / (nbytes / 1e9)
                    if steady is not None else None,
                    "fallbacks": len(fallbacks), "fallback_runs": fallbacks,
                    "timed_publishes_with_group_rebuild": rebuilds, "bucket_mb": args.bucket_mb,
                    # Inside a broadcast publish (every timed one, fallbacks included): weightsync's read of the
                    # checkpoint, pause, broadcast and continue; and each engine's receive (mean of the 4).
                    "breakdown_s": {k: stats(xs) for k, xs in parts.items() if xs}}
                ratio = row["ratios"].get("broadcast4_over_single")
                row["target_met"] = ratio is not None and ratio["mean"] <= TARGET
                results["sizes"][size] = row
        finally:
            for ws in services.values():
                ws.stop()
            redis.stop()
    sizes = results["sizes"]

    def r3(x):
        return None if x is None else round(x, 3)

    results |= {
        "benchmark": "weightsync",
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch_threads": torch.get_num_threads(), "gpu": None},
        "repeats": args.repeats,
        "target": f"broadcast to {N} <= {TARGET}x a single load (mean of per-repeat ratios)",
        "target_met": {s: r["target_met"] for s, r in sizes.items()},
        "broadcast4_over_single": {s: {k: r3(r["ratios"]["broadcast4_over_single"][k]) for k in ("mean", "se")}
                                   for s, r in sizes.items() if "broadcast4_over_single" in r["ratios"]},
        "disk4_over_single": {s: {k: r3(r["ratios"]["disk4_over_single"][k]) for k in ("mean", "se")}
                              for s, r in sizes.items() if "disk4_over_single" in r["ratios"]},
        "broadcast_s_per_gb": {s: r3(r["broadcast"]["s_per_gb"]) for s, r in sizes.items()},
        "broadcast_fallbacks": {s: r["broadcast"]["fallbacks"] for s, r in sizes.items()},
        "group_formation_s_est": {s: r3(r["broadcast"]["group_formation_s_est"]) for s, r in sizes.items()},
        "broadcast_breakdown_s": {s: {k: r3(x["median"]) for k, x in r["broadcast"]["breakdown_s"].items()}
                                  for s, r in sizes.items()},
        "wall_s": round(time.monotonic() - began, 1),
        "command": "make bench-weightsync" if sys.argv[1:] == [] else "python bench/weightsync.py " + " ".join(
            sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weightsync.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "weightsync.png")
    print(json.dumps(results))
    return 0


LABELS = {"single": "single load\n(1 engine)", "disk4": "disk fan-out\n(publish x4)",
          "broadcast4": "broadcast\n(publish x4)", "direct4": "4 loads direct\n(no weightsync)"}


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        row = results["sizes"][size]
        names = [v for v in VARIANTS if v in row["variants"]]
        labels = [LABELS[v] for v in names]
        values = [row["variants"][v]["median"] for v in names]
        errs = [row["variants"][v]["se"] for v in names]
        verify = [row["verify_s"][v]["median"] if v in row["verify_s"] else 0.0 for v in names]
        colours = {"single": "#1f77b4", "disk4": "#1f77b4", "broadcast4": "#2ca02c", "direct4": "#7f7f7f"}
        bars = ax.bar(labels, [v - w for v, w in zip(values, verify, strict=True)],
                      color=[colours[v] for v in names], label="load / broadcast (pause, update, continue)")
        ax.bar(labels, verify, bottom=[v - w for v, w in zip(values, verify, strict=True)], color="#ff7f0e",
               yerr=errs, capsize=4, label="verify (sha256)")
        single = row["variants"]["single"]["median"]
        ax.axhline(TARGET * single, color="grey", ls="--", lw=1, label=f"{TARGET}x single load")
        ratios = {v: f"{v}_over_single" for v in ("disk4", "broadcast4", "direct4")}
        for bar, v, e, name in zip(bars, values, errs, names, strict=True):
            text = f"{v:.2f}s"
            if name in ratios and ratios[name] in row["ratios"]:
                rr = row["ratios"][ratios[name]]
                text += f"\n{rr['mean']:.1f}±{rr['se']:.1f}x"
            ax.text(bar.get_x() + bar.get_width() / 2, v + e, text, ha="center", va="bottom", fontsize=8)
        b = row["broadcast"]
        formation = b["group_formation_s_est"]
        extra = f"; group formed in ~{formation:.2f}s" if formation is not None else ""
        ax.set_title(f"{size} ({row['bytes'] / 1e6:.0f} MB), {results['machine']['cpus']} CPU cores, "
                     f"{results['repeats']} repeats\nfallbacks {b['fallbacks']}{extra}", fontsize=9)
        ax.set_ylabel("seconds (median, ± s.e.)")
        ax.set_ylim(top=max(v + e for v, e in zip(values, errs, strict=True)) * 1.6)
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
