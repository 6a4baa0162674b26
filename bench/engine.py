"""`make bench-engine`: generated tokens/s of the embedded engine, batched against sequential, in one run.

The tiny shipped Qwen2.5-VL on the CPU, through the real HTTP server. Every
request is an agent step as the rollout gateway builds it: the system prompt with
the action grammar, an instruction, a few history lines and one 1280x720
screenshot (JPEG q80, as envfleet stores them, base64), sampled at temperature 1
for a fixed number of tokens.

  sequential     one request at a time, each waiting for the previous
  concurrent c   c requests in flight (c = 1, 8, 32), batched by the engine

Modes run interleaved in rounds so machine noise hits all alike. Prints one JSON
object on its last line and writes bench/results/engine.json and engine.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import aiohttp
import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncwebrl.common.agent.prompt import HistoryStep, render  # noqa: E402
from asyncwebrl.common.localstack import EngineProcess  # noqa: E402
from asyncwebrl.common.models.tiny import SHIPPED  # noqa: E402

RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))


def screenshot(seed: int) -> str:
    rng = np.random.RandomState(seed)
    # A page-like image: flat regions and a few boxes, not noise (PNG size like a real page).
    img = np.full((720, 1280, 3), 245, np.uint8)
    for _ in range(12):
        y, x = rng.randint(0, 680), rng.randint(0, 1200)
        img[y:y + rng.randint(10, 60), x:x + rng.randint(40, 300)] = rng.randint(0, 255, 3)
    buf = io.BytesIO()
    # JPEG at quality 80: what envfleet stores by default.
    Image.fromarray(img).save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def bodies(n: int, tokens: int, first_seed: int = 0) -> list[dict]:
    """Fresh screenshots: the engine caches processed images by content, and every
    step of a rollout brings at least one new one."""
    history = [HistoryStep("Shop", "click(coordinate=[500.0, 300.0])", True)] * 3
    return [
        {
            "text": render(f"Buy item {i} and report the order number", history, 1),
            "image_data": [screenshot(first_seed + i)],
            "sampling_params": {"max_new_tokens": tokens, "temperature": 1.0, "ignore_eos": True},
            "return_logprob": True,
        }
        for i in range(n)
    ]


async def run_mode(session: aiohttp.ClientSession, url: str, reqs: list[dict], concurrency: int) -> dict:
    queue = list(reqs)
    tokens = 0
    latencies = []
    started = time.perf_counter()

    async def worker():
        nonlocal tokens
        while queue:
            body = queue.pop()
            t = time.perf_counter()
            async with session.post(url + "/generate", json=body) as resp:
                out = await resp.json()
                assert resp.status == 200, out
            latencies.append(time.perf_counter() - t)
            tokens += len(out["output_ids"])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"tokens_per_s": tokens / wall, "requests_per_s": len(reqs) / wall,
            "median_latency_s": statistics.median(latencies)}


async def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        engine = EngineProcess(
            ["--model-path", str(SHIPPED / args.family), "--device", "cpu", "--max-batch-size",
             str(max(args.concurrency)), "--log-level", "WARNING"],
            pathlib.Path(tmp) / "engine.log",
        )
        engine.wait_ready()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                await run_mode(session, engine.url, bodies(4, args.tokens, 10**6), 4)  # warm-up
                seed = 0
                modes = [("sequential", 1)] + [(f"concurrent_{c}", c) for c in args.concurrency]
                rounds: dict[str, list[dict]] = {name: [] for name, _ in modes}
                for r in range(args.rounds):
                    order = modes[r % len(modes):] + modes[: r % len(modes)]
                    for name, c in order:
                        # Sequential is the baseline: the same kind of requests, one after another.
                        reqs = bodies(args.requests, args.tokens, seed)
                        seed += args.requests
                        rounds[name].append(await run_mode(session, engine.url, reqs, c))
                    print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                        f"{n} {v[-1]['tokens_per_s']:.0f} tok/s" for n, v in rounds.items()), flush=True)
        finally:
            engine.stop()
    med = {n: {k: statistics.median(x[k] for x in v) for k in v[0]} for n, v in rounds.items()}
    seq = med["sequential"]["tokens_per_s"]
    top = max(args.concurrency)
    return {
        "benchmark": "engine",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "device": "cpu"},
        "command": "make bench-engine",
        "workload": {"model": f"tiny {args.family} (shipped, random weights)", "requests_per_mode": args.requests,
                     "max_new_tokens": args.tokens, "image": "1280x720 JPEG q80, one per request",
                     "rounds": args.rounds},
        "tokens_per_s": {n: round(v["tokens_per_s"], 1) for n, v in med.items()},
        "median_latency_s": {n: round(v["median_latency_s"], 3) for n, v in med.items()},
        f"speedup_{top}_vs_sequential": round(med[f"concurrent_{top}"]["tokens_per_s"] / seq, 2),
        "speedup_vs_sequential": {n: round(v["tokens_per_s"] / seq, 2) for n, v in med.items()},
        "target": {f"speedup_{top}_vs_sequential": 4.0},
        "rounds_raw": {n: [round(x["tokens_per_s"], 1) for x in v] for n, v in rounds.items()},
    }


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["tokens_per_s"])
    values = [results["tokens_per_s"][n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar([n.replace("concurrent_", "") + (" in flight" if n != "sequential" else "") for n in names], values,
                  color=["#999999"] + ["#1f77b4"] * (len(names) - 1))
    for bar, n in zip(bars, names):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{results['speedup_vs_sequential'][n]:.1f}x",
                ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("generated tokens/s")
    ax.set_title(f"embedded engine, {results['workload']['model']}, CPU ({results['machine']['cpus']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--requests", type=int, default=64, help="requests per mode per round")
    parser.add_argument("--tokens", type=int, default=128,
                        help="max_new_tokens of every request (an agent step: a few lines of reasoning, one call)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="engine", help="result files: bench/results/<name>.json and .png")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / f"{args.name}.png")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
