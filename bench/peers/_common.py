"""Shared harness for the peer runners (stdlib only: imported from both venvs).

A runner supplies a ``Peer`` class (built inside each worker process); this
module parses the CLI, splits the workload round-robin over N spawned worker
processes, lines them up on a barrier after env construction, and prints the
one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
import traceback

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# MiniWoB's own episode timer (core.EPISODE_MAX_TIME, ms): the largest value
# setTimeout accepts, i.e. effectively off.
EPISODE_MAX_TIME_MS = 2147483647
BARRIER_TIMEOUT_S = 600


def miniwob_html_dir() -> str:
    """Directory holding the MiniWoB task pages (from the miniwob wheel)."""
    import pathlib

    import miniwob

    return str(pathlib.Path(miniwob.__file__).parent / "html" / "miniwob")


def parse_args(with_delays_flag: bool) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True, help="workload JSON file")
    ap.add_argument("--concurrency", type=int, default=1)
    if with_delays_flag:
        ap.add_argument(
            "--no-delays",
            action="store_true",
            help="set the peer's deliberate per-step waits/sleeps to zero "
            "(miniwob gym: accepted, no-op; its wait_ms already defaults to 0)",
        )
    args = ap.parse_args()
    if args.concurrency < 1:
        ap.error("--concurrency must be >= 1")
    return args


def _worker(peer_factory, peer_kwargs, wid, items, barrier, results):
    """items: list of (workload_index, episode_dict)."""
    out = {"wid": wid, "episodes": [], "errors": [], "t_start": None, "t_end": None}
    peer = None
    try:
        peer = peer_factory(**peer_kwargs)
        peer.prepare([ep for _, ep in items])  # env construction, not timed
    except Exception as e:  # still reach the barrier so nobody deadlocks
        out["errors"].append(f"worker {wid} env construction: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        peer = None
    try:
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
    except Exception as e:
        out["errors"].append(f"worker {wid} barrier: {type(e).__name__}: {e}")
    out["t_start"] = time.monotonic()
    if peer is not None:
        for idx, ep in items:
            rec = {"index": idx, "reward": None, "steps": 0, "latencies": [], "reset_s": None, "errors": []}
            try:
                peer.run_episode(ep, rec)
            except Exception as e:
                rec["errors"].append(f"{type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stderr)
            for msg in rec.pop("errors"):
                out["errors"].append(
                    f"episode {idx} ({ep.get('task')} seed {ep.get('seed')}): {msg}"
                )
            out["episodes"].append(rec)
    out["t_end"] = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux
    if peer is not None:
        try:
            peer.close()
        except Exception as e:
            print(f"worker {wid} close: {e!r}", file=sys.stderr)
    results.put(out)


def main(peer_name, peer_factory, peer_kwargs, concurrency, workload_path, delays):
    with open(workload_path) as f:
        episodes = json.load(f)["episodes"]
    n = concurrency
    shares = [[] for _ in range(n)]
    for i, ep in enumerate(episodes):
        shares[i % n].append((i, ep))

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(peer_factory, peer_kwargs, w, shares[w], barrier, results),
        )
        for w in range(n)
    ]
    for p in procs:
        p.start()
    outs = []
    errors = []
    for _ in range(n):
        try:
            outs.append(results.get(timeout=3600))
        except Exception as e:
            errors.append(f"missing worker result: {type(e).__name__}: {e}")
            break
    for p in procs:
        p.join(timeout=60)
        if p.exitcode not in (0, None):
            errors.append(f"worker pid {p.pid} exit code {p.exitcode}")

    rewards = [None] * len(episodes)
    latencies = []
    resets = []
    steps = 0
    for o in sorted(outs, key=lambda o: o["wid"]):
        errors.extend(o["errors"])
        for rec in o["episodes"]:
            r = rec["reward"]
            rewards[rec["index"]] = float(r) if r is not None else None
            steps += rec["steps"]
            latencies.extend(rec["latencies"])
            if rec["reset_s"] is not None:
                resets.append(rec["reset_s"])
    starts = [o["t_start"] for o in outs if o["t_start"] is not None]
    ends = [o["t_end"] for o in outs if o["t_end"] is not None]
    wall = (max(ends) - min(starts)) if starts and ends else 0.0
    summary = {
        "peer": peer_name,
        "concurrency": n,
        "delays": delays,
        "episodes": len(episodes),
        "steps": steps,
        "wall_s": round(wall, 4),
        "steps_per_s": round(steps / wall, 4) if wall > 0 else 0.0,
        "median_step_latency_s": round(statistics.median(latencies), 5) if latencies else None,
        "rewards": rewards,
        "errors": errors,
        # extra (not in the shared schema): median env.reset() time
        "median_reset_s": round(statistics.median(resets), 5) if resets else None,
    }
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)
    return 0  # problems are reported in "errors"
