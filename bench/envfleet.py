"""`make bench-envfleet`: env steps/s of envfleet against the limit and the peers, in one run.

The same MiniWoB click episodes (task, seed, clicks) go through:
  raw          a bare async Playwright loop in this process (the limit): per episode a
               fresh context, load, seed, then click + JPEG screenshot + reward read per step
  envfleet     the real service over gRPC (Allocate, Step per click, Release), its screenshots
               stored through a buffer (PutBlobs) as in a deployment
  browsergym   BrowserGym's MiniWoB env, with its defaults and with its per-step waits at zero
  miniwob_gym  the miniwob package's own gymnasium env (Selenium)
at 1, 4 and 8 concurrent sessions, interleaved in rounds so machine noise hits all alike.
Also: memory per added context (PSS of the Chromium process tree). Prints one JSON
object on its last line and writes bench/results/envfleet.json and envfleet.png.
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
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncwebrl.common.grpcclient import channel  # noqa: E402
from asyncwebrl.common.localstack import RedisServer, ServiceProcess  # noqa: E402
from asyncwebrl.envfleet.config import CHROMIUM_FLAGS  # noqa: E402
from asyncwebrl.envfleet.tasks import MiniWoBSource  # noqa: E402
from asyncwebrl.v1 import env_pb2, env_pb2_grpc  # noqa: E402

RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))
PEERS = ROOT / "bench" / "peers"
CHROMIUM = "/usr/bin/chromium"
NOOP_CLICK = (80, 25)  # on the instruction bar: does nothing in click tasks


def log(msg: str) -> None:
    print(f"[bench-envfleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- workload


async def make_workload(episodes: int, noop_steps: int) -> dict:
    """Episodes whose last click hits the target, found in the DOM of the seeded page."""
    from playwright.async_api import async_playwright

    source = MiniWoBSource()
    await source.start()
    tasks = {t.name: t for t in source.tasks()}
    targets = {
        "click-test": "() => document.querySelector('#subbtn')",
        "click-button": """() => { const want = core.getUtterance().match(/"([^"]*)"/)[1];
                          return [...document.querySelectorAll('#area button')].find(b => b.textContent === want); }""",
    }
    out = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        page = await browser.new_page(viewport={"width": 160, "height": 210})
        for i in range(episodes):
            task = list(targets)[i % len(targets)]
            seed = 1000 + i
            spec = tasks[f"miniwob/{task}"]
            await page.goto(source.url(spec, seed))
            await source.begin(page, spec, seed)
            box = await (await page.evaluate_handle(targets[task])).as_element().bounding_box()
            target = [round(box["x"] + box["width"] / 2), round(box["y"] + box["height"] / 2)]
            out.append({"task": task, "seed": seed, "clicks": [list(NOOP_CLICK)] * noop_steps + [target],
                        "expected_reward": 1.0})
        await browser.close()
    await source.stop()
    return {"episodes": out}


def summarise(name: str, concurrency: int, steps: int, wall: float, latencies: list[float], rewards: list[float],
              expected: list[float], resets: list[float]) -> dict:
    return {
        "median_reset_s": round(statistics.median(resets), 4) if resets else None,
        "system": name,
        "concurrency": concurrency,
        "steps": steps,
        "wall_s": round(wall, 3),
        "steps_per_s": round(steps / wall, 2),
        "median_step_latency_s": round(statistics.median(latencies), 4) if latencies else None,
        "episodes_correct": sum(1 for r, e in zip(rewards, expected) if r == e),
        "episodes": len(expected),
    }


# ---------------------------------------------------------------- raw Playwright (the limit)


async def run_raw(workload: dict, concurrency: int) -> dict:
    from playwright.async_api import async_playwright

    source = MiniWoBSource()
    await source.start()
    tasks = {t.name: t for t in source.tasks()}
    episodes = workload["episodes"]
    queue: asyncio.Queue = asyncio.Queue()
    for i, ep in enumerate(episodes):
        queue.put_nowait((i, ep))
    rewards = [None] * len(episodes)
    latencies: list[float] = []
    resets: list[float] = []
    steps = 0

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))

        async def worker():
            nonlocal steps
            while not queue.empty():
                i, ep = queue.get_nowait()
                spec = tasks[f"miniwob/{ep['task']}"]
                r0 = time.perf_counter()
                context = await browser.new_context(viewport={"width": 160, "height": 210})
                page = await context.new_page()
                await page.goto(source.url(spec, ep["seed"]), wait_until="load")
                await source.begin(page, spec, ep["seed"])
                await page.screenshot(type="jpeg", quality=80)
                resets.append(time.perf_counter() - r0)
                outcome = None
                for x, y in ep["clicks"]:
                    t0 = time.perf_counter()
                    await page.mouse.click(x, y)
                    outcome = await source.outcome(page)
                    await page.screenshot(type="jpeg", quality=80)
                    latencies.append(time.perf_counter() - t0)
                    steps += 1
                    if outcome.done:
                        break
                rewards[i] = outcome.reward
                await context.close()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        await browser.close()
    await source.stop()
    return summarise("raw_playwright", concurrency, steps, wall, latencies, rewards,
                     [e["expected_reward"] for e in episodes], resets)


# ---------------------------------------------------------------- envfleet over gRPC


def run_envfleet(stub, workload: dict, concurrency: int, name: str = "envfleet") -> dict:
    episodes = workload["episodes"]
    lock = threading.Lock()
    pending = list(enumerate(episodes))
    rewards = [None] * len(episodes)
    latencies: list[float] = []
    resets: list[float] = []
    counts = [0]

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                i, ep = pending.pop(0)
            r0 = time.perf_counter()
            a = stub.Allocate(env_pb2.AllocateRequest(task=f"miniwob/{ep['task']}", seed=ep["seed"]), timeout=60)
            with lock:
                resets.append(time.perf_counter() - r0)
            reward = None
            for x, y in ep["clicks"]:
                t0 = time.perf_counter()
                r = stub.Step(env_pb2.StepRequest(session_id=a.session_id, action=env_pb2.Action(
                    coordinates=env_pb2.COORDINATE_SPACE_PIXELS, click=env_pb2.Click(at=env_pb2.Point(x=x, y=y)))),
                    timeout=60)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    counts[0] += 1
                reward = r.reward
                if r.done:
                    break
            rewards[i] = reward
            stub.Release(env_pb2.ReleaseRequest(session_id=a.session_id), timeout=60)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return summarise(name, concurrency, counts[0], wall, latencies, rewards,
                     [e["expected_reward"] for e in episodes], resets)


def chromium_pss(pid: int) -> int:
    total = 0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def memory_per_context(stub, contexts: int) -> dict:
    """PSS of the Chromium tree with 0..contexts sessions open; the slope is the cost of one more."""
    def settle_pss(pid):
        time.sleep(1.0)
        return chromium_pss(pid)

    pid = stub.Stats(env_pb2.StatsRequest()).browser[0].pid
    held = []
    points = [(0, settle_pss(pid))]
    try:
        for k in range(1, contexts + 1):
            held.append(stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=k), timeout=60))
            points.append((k, settle_pss(pid)))
    finally:
        for a in held:
            stub.Release(env_pb2.ReleaseRequest(session_id=a.session_id))
    xs = [p[0] for p in points]
    ys = [p[1] / 2**20 for p in points]
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return {"pss_mib_by_contexts": [round(y, 1) for y in ys], "mib_per_added_context": round(slope, 1)}


# ---------------------------------------------------------------- peers


def run_peer(script: str, venv: str, workload_path: pathlib.Path, concurrency: int, extra: list[str]) -> dict | None:
    python = PEERS / venv / "bin" / "python"
    if not python.exists():
        log(f"peer {script}: {python} missing (bench/peers/setup.sh did not run?)")
        return {"error": f"{python} missing"}
    cmd = [str(python), str(PEERS / script), "--workload", str(workload_path), "--concurrency", str(concurrency), *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "timeout after 900 s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    data = json.loads(lines[-1])
    expected = [1.0] * len(data.get("rewards", []))
    if "browsergym" in script:
        system = "browsergym_defaults" if data.get("delays") else "browsergym_no_delays"
    else:
        system = "miniwob_gym"
    return {
        "system": system,
        "concurrency": concurrency,
        "steps": data["steps"],
        "wall_s": round(data["wall_s"], 3),
        "steps_per_s": round(data["steps_per_s"], 2),
        "median_step_latency_s": data.get("median_step_latency_s"),
        "median_reset_s": data.get("median_reset_s"),
        "episodes_correct": sum(1 for r, e in zip(data.get("rewards", []), expected) if r is not None and r > 0),
        "episodes": data.get("episodes"),
        "delays": data.get("delays"),
        "errors": data.get("errors", [])[:3],
    }


# ---------------------------------------------------------------- main


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in results["steps_per_s"] if results["steps_per_s"][s]]
    levels = results["concurrency"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        values = [results["steps_per_s"][system].get(str(c), 0) or 0 for c in levels]
        ax.bar([j + i * width for j in range(len(levels))], values, width, label=system)
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(levels))])
    ax.set_xticklabels([f"{c} sessions" for c in levels])
    ax.set_ylabel("env steps / s (higher is better)")
    ax.set_title(f"MiniWoB click episodes, {os.cpu_count()} cores, {results['date']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--noop-steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--peer-concurrency", default="1,4")
    parser.add_argument("--browsergym-episodes", type=int, default=8)
    parser.add_argument("--skip-peers", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    peer_levels = [int(c) for c in args.peer_concurrency.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)

    log("building the workload")
    workload = asyncio.run(make_workload(args.episodes, args.noop_steps))
    workload_path = RESULTS / "envfleet_workload.json"
    workload_path.write_text(json.dumps(workload))
    # BrowserGym relaunches Chromium on every reset: it runs the first episodes only.
    slice_path = RESULTS / "envfleet_workload_browsergym.json"
    slice_path.write_text(json.dumps({"episodes": workload["episodes"][: args.browsergym_episodes]}))

    runs: dict[str, dict[int, list[dict]]] = {}

    def record(result):
        if result and "system" in result:
            runs.setdefault(result["system"], {}).setdefault(result["concurrency"], []).append(result)
            log(f"{result['system']:<22} c={result['concurrency']}  {result['steps_per_s']:7.2f} steps/s  "
                f"median step {result['median_step_latency_s']}s  reset {result['median_reset_s']}s  correct {result['episodes_correct']}/{result['episodes']}")
        elif result:
            log(f"peer failed: {result}")
            runs.setdefault("errors", {}).setdefault(0, []).append(result)

    with tempfile.TemporaryDirectory(prefix="bench-envfleet-") as tmp:
        redis = RedisServer(pathlib.Path(tmp))
        # envfleet stores its screenshots through the buffer's PutBlobs (it has no Redis of its own).
        buffer = ServiceProcess("buffer", ["--redis-url", redis.url, "--log-level", "WARNING"],
                                {"ASYNCWEBRL_REDIS_PASSWORD": redis.password}, pathlib.Path(tmp) / "buffer.log")
        buffer.wait_ready()

        def start(*extra):
            return ServiceProcess(
                "envfleet",
                ["--buffer-target", buffer.target, "--log-level", "WARNING", "--browsers", "1",
                 "--contexts-per-browser", str(max(levels)), *extra],
                {},
                pathlib.Path(tmp) / f"envfleet{len(extra)}.log",
            )

        # The default (a fresh context per episode) and the opt-in in-page reset, side by side.
        svc, warm_svc = start(), start("--warm-reset")
        try:
            svc.wait_ready()
            warm_svc.wait_ready()
            stub = env_pb2_grpc.EnvServiceStub(channel(svc.target))
            warm_stub = env_pb2_grpc.EnvServiceStub(channel(warm_svc.target))
            run_envfleet(stub, {"episodes": workload["episodes"][:2]}, 1)  # warm-up
            run_envfleet(warm_stub, {"episodes": workload["episodes"][:2]}, 1)
            for rnd in range(args.rounds):
                log(f"round {rnd + 1}/{args.rounds}")
                for c in levels:
                    record(asyncio.run(run_raw(workload, c)))
                    record(run_envfleet(stub, workload, c))
                    record(run_envfleet(warm_stub, workload, c, "envfleet_warm_reset"))
                    if args.skip_peers or c not in peer_levels:
                        continue
                    record(run_peer("run_miniwob_gym.py", ".venv-miniwob", workload_path, c, []))
                    if rnd == 0:  # BrowserGym takes seconds per reset; one round on a slice says enough
                        record(run_peer("run_browsergym.py", ".venv-browsergym", slice_path, c, ["--no-delays"]))
                        record(run_peer("run_browsergym.py", ".venv-browsergym", slice_path, c, []))
            log("memory per added context")
            memory = memory_per_context(stub, min(8, max(levels)))
        finally:
            svc.stop()
            warm_svc.stop()
            buffer.stop()
            redis.stop()

    def best(system, c):
        values = [r["steps_per_s"] for r in runs.get(system, {}).get(c, [])]
        return round(statistics.median(values), 2) if values else None

    names: dict[str, str] = {}
    steps_per_s: dict[str, dict[str, float | None]] = {}
    latency: dict[str, dict[str, float | None]] = {}
    reset: dict[str, dict[str, float | None]] = {}
    for system, by_c in runs.items():
        if system == "errors":
            continue
        label = names.get(system, system)
        steps_per_s[label] = {str(c): best(system, c) for c in by_c}
        latency[label] = {str(c): statistics.median([r["median_step_latency_s"] for r in rs]) for c, rs in by_c.items()}
        reset[label] = {str(c): statistics.median([r["median_reset_s"] or 0 for r in rs]) for c, rs in by_c.items()}

    def ratio(a, b, c):
        x, y = steps_per_s.get(a, {}).get(str(c)), steps_per_s.get(b, {}).get(str(c))
        return round(x / y, 2) if x and y else None

    at = 4 if 4 in levels else levels[0]
    results = {
        "benchmark": "envfleet",
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version()},
        "command": "make bench-envfleet",
        "workload": {"episodes": args.episodes, "browsergym_episodes": args.browsergym_episodes,
                     "steps_per_episode": args.noop_steps + 1,
                     "tasks": ["miniwob/click-test", "miniwob/click-button"], "rounds": args.rounds},
        "concurrency": levels,
        "steps_per_s": steps_per_s,
        "median_step_latency_s": latency,
        "median_reset_s": reset,
        "correct_episodes": {names.get(s, s): min(r["episodes_correct"] for rs in by_c.values() for r in rs)
                             for s, by_c in runs.items() if s != "errors"},
        "memory": memory,
        "envfleet_vs_raw_at_4": ratio("envfleet", "raw_playwright", at),
        "envfleet_vs_browsergym_defaults_at_4": ratio("envfleet", "browsergym_defaults", at),
        "envfleet_vs_browsergym_no_delays_at_4": ratio("envfleet", "browsergym_no_delays", at),
        "envfleet_vs_miniwob_gym_at_4": ratio("envfleet", "miniwob_gym", at),
        "envfleet_warm_reset_vs_miniwob_gym_at_4": ratio("envfleet_warm_reset", "miniwob_gym", at),
        "peer_errors": [r.get("error") for r in runs.get("errors", {}).get(0, [])],
    }
    results["targets"] = {
        "envfleet_ge_90pct_raw_at_4": (results["envfleet_vs_raw_at_4"] or 0) >= 0.9,
        "envfleet_ge_5x_browsergym_at_4": (results["envfleet_vs_browsergym_defaults_at_4"] or 0) >= 5,
        "le_80_mib_per_context": memory["mib_per_added_context"] <= 80,
    }
    (RESULTS / "envfleet.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "envfleet.png")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
