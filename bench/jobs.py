"""What the training benchmarks (e2e, staleness, normaliser) share: the local stack
brought up by ``asyncwebrl up``, jobs submitted to its REST api exactly as a user
would, their per-step series read back from ``GET /v1/jobs/{id}/metrics``, and
envfleet's Prometheus counters scraped around each measuring window.

One warm-start (supervised steps on the reference agent's demonstrations) is
run once per benchmark and every job of that benchmark starts from its
checkpoint: the api's model roots include the run directory, so a job names
it as ``model.path``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from asyncwebrl.api.client import Client  # noqa: E402
from asyncwebrl.api.client import metrics_since  # noqa: E402
from asyncwebrl.api.stack import load_stack  # noqa: E402
from asyncwebrl.common.weights import latest_version  # noqa: E402

RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))
FINAL = ("succeeded", "failed", "cancelled")

# The click tasks the tiny policy learns; the warm-start's demonstrations are drawn from them.
CLICK_TASKS = ["miniwob/click-test", "miniwob/click-button"]
# The demo job: its recipe (tasks, warm-start, RL settings) is what bench-learning and bench-normaliser run.
DEMO = ROOT / "examples" / "jobs" / "demo.yaml"


def say(name: str, message: str) -> None:
    print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def base_spec(name: str) -> dict:
    """The job every training benchmark varies: the tiny Qwen2.5-VL policy, GRPO, CPU."""
    return {
        "name": name,
        "model": {"path": "tiny/qwen2_5_vl"},
        "tasks": {"tasks": CLICK_TASKS, "difficulties": ["easy"], "train_seed": 1},
        "algorithm": {"step_norm": "constant", "k": 10, "lr": 1e-3, "warmup_steps": 5, "minibatches": 2,
                      "max_steps": 0},
        "rollout": {"mode": "async", "group_size": 8, "batch_groups": 4, "max_staleness": 2, "concurrency": 16,
                    "temperature": 1.0, "max_new_tokens": 48, "steps_easy": 1},
        "resources": {"engines": 1, "engine_kind": "embedded", "device": "cpu"},
    }


def merge(doc: dict, **sections: dict) -> dict:
    out = json.loads(json.dumps(doc))
    for section, values in sections.items():
        if isinstance(values, dict):
            out.setdefault(section, {}).update(values)
        else:
            out[section] = values
    return out


class Stack:
    """``asyncwebrl up`` in ``run_dir`` (redis, envfleet, buffer, weightsync, api), ``down`` on exit."""

    def __init__(self, run_dir: pathlib.Path, name: str, contexts: int = 16,
                 chromium: str = "/usr/bin/chromium") -> None:
        self.run_dir = run_dir.resolve()
        self.name = name
        self.cli = [sys.executable, "-m", "asyncwebrl.api.cli", "--run-dir", str(self.run_dir)]
        env = {**os.environ, "ASYNCWEBRL_MODEL_ROOTS": str(self.run_dir / "jobs")}
        (self.run_dir / "jobs").mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([*self.cli, "up", "--contexts", str(contexts), "--warm-reset", "--api-port", "0",
                            "--chromium-path", chromium],
                           check=True, env=env, stdout=sys.stderr)
        except subprocess.CalledProcessError:
            self.close()  # what did start (a failed up leaves it running)
            raise
        self.stack = load_stack(self.run_dir)
        self.client = Client(self.stack["api_url"], self.stack["api_token"], timeout=180.0)

    def close(self) -> None:
        subprocess.run([*self.cli, "down"], check=False, stdout=sys.stderr)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- envfleet's counters ------------------------------------------------------------------

    def envfleet_counters(self) -> dict[str, float]:
        """Sums of envfleet's Allocate/Step seconds and its step and allocation counts."""
        port = self.stack["components"]["envfleet"]["http_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        names = {"asyncwebrl_envfleet_step_seconds_sum": "step_seconds",
                 "asyncwebrl_envfleet_allocate_seconds_sum": "allocate_seconds",
                 "asyncwebrl_envfleet_steps_total": "steps", "asyncwebrl_envfleet_allocations_total": "allocations"}
        out = dict.fromkeys(names.values(), 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in names:
                    out[names[sample.name]] += sample.value
        return out

    # --- jobs ---------------------------------------------------------------------------------

    def submit(self, spec: dict) -> str:
        job = self.client.request("POST", "/v1/jobs", spec)
        return job["id"]

    def job(self, jid: str) -> dict:
        return self.client.get(f"/v1/jobs/{jid}")

    def cancel(self, jid: str) -> dict:
        job = self.job(jid)
        if job["state"] in FINAL:
            return job
        return self.client.request("DELETE", f"/v1/jobs/{jid}")

    def rows(self, jid: str) -> list[dict]:
        got = metrics_since(self.client, jid, 0)
        return got[0] if got else []

    def warm_start(self, spec: dict, steps: int) -> str:
        """Runs ``spec``'s warm-start (``steps`` supervised steps) and returns the checkpoint as a
        ``model.path`` under the api's model roots. Another benchmark sharing the run directory
        reuses it (the same demonstrations and steps give the same starting policy)."""
        a = spec.get("algorithm", {})
        warm = {"warm_start_steps": steps, "warm_start_lr": a.get("warm_start_lr", 3e-3),
                "warm_start_epochs": a.get("warm_start_epochs", 8), "warm_start_batch": a.get("warm_start_batch", 16)}
        # Keyed by what makes the starting policy: its demonstrations' tasks and the supervised settings.
        key = hashlib.sha256(json.dumps([spec["model"], spec["tasks"], spec["rollout"], warm],
                                        sort_keys=True).encode()).hexdigest()[:12]
        cache = self.run_dir / f"warm-start-{key}.json"
        if cache.is_file():
            path = json.loads(cache.read_text())["model_path"]
            if (self.run_dir / "jobs" / path / "config.json").is_file():
                say(self.name, f"reusing the warm-start {path}")
                return path
        jid = self.submit(merge(spec, name=f"{spec['name']}-warm", algorithm=warm))
        say(self.name, f"warm-start {jid}: {steps} supervised steps on demonstrations")
        deadline = time.monotonic() + 1800
        while True:
            job = self.job(jid)
            if job.get("phase") == "rl" or job["state"] in FINAL:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: the warm-start {jid} did not finish in 30 min")
            time.sleep(3)
        self.cancel(jid)
        found = latest_version(self.run_dir / "jobs" / jid / "warm")
        if found is None or found[0].version != steps:
            raise SystemExit(f"{self.name}: the warm-start {jid} ended {job['state']} ({job.get('reason')}) "
                             f"without its version {steps}")
        path = f"{jid}/warm/{found[1].name}"
        cache.write_text(json.dumps({"model_path": path}))
        return path

    def run(self, spec: dict, *, window_s: float | None = None, steps: int | None = None,
            min_steps: int = 3, timeout_s: float = 3600, stall_s: float = 300) -> dict:
        """Runs one job until ``window_s`` seconds after its first training step and at least
        ``min_steps`` steps (or until it has trained ``steps`` steps), then cancels it. Returns its rows and
        envfleet's counters over the window (first step to the end). A job that trains no step for
        ``stall_s`` after its first one is stopped there (``stalled``: e.g. a policy that fails every
        episode gives only zero-variance groups, which a job that drops them never trains on)."""
        jid = self.submit(spec)
        started = time.monotonic()
        first_at, first_env, last_shown, ended, stalled = None, None, 0, False, False
        last_step_at = started
        rows: list[dict] = []
        try:
            while True:
                job = self.job(jid)
                got = metrics_since(self.client, jid, rows[-1]["step"] if rows else 0)
                rows += got[0] if got else []
                if rows and first_at is None:
                    first_at, first_env = time.monotonic(), self.envfleet_counters()
                if rows and rows[-1]["step"] != last_shown:
                    last_shown, last_step_at = rows[-1]["step"], time.monotonic()
                    r = rows[-1]
                    say(self.name, f"{spec['name']}: step {r['step']} success {r['success']:.2f} "
                                   f"traj/h {r['trajectories_per_hour']:.0f} staleness {r['staleness_mean']:.2f}")
                if steps is not None and len(rows) >= steps:
                    break
                if (first_at is not None and window_s is not None and time.monotonic() - first_at >= window_s
                        and len(rows) >= min_steps):
                    break
                if job["state"] in FINAL:
                    if job["state"] == "succeeded" and steps is not None:
                        if ended:
                            break
                        ended = True  # its last rows are read on the next pass
                        continue
                    raise SystemExit(f"{self.name}: job {jid} ended {job['state']}: {job.get('reason')}")
                if rows and time.monotonic() - last_step_at > stall_s:
                    say(self.name, f"{spec['name']}: no step for {stall_s:.0f}s after step {last_shown}; stopping it")
                    stalled = True
                    break
                if time.monotonic() - started > timeout_s:
                    raise SystemExit(f"{self.name}: job {jid} did not finish in {timeout_s:.0f}s")
                time.sleep(1)
            if first_at is None:
                raise SystemExit(f"{self.name}: job {jid} trained no step")
            window = time.monotonic() - first_at
            env = {k: v - first_env[k] for k, v in self.envfleet_counters().items()}
        finally:
            self.cancel(jid)
        return {"job": jid, "spec": spec, "rows": rows, "window_s": window, "envfleet": env, "stalled": stalled}


def weighted_mean(rows: list[dict], field: str, value=None) -> float | None:
    """Episode-weighted mean of ``field`` (or of ``value(row)``) over the rows that have it."""
    pairs = [((value(r) if value else r.get(field)), r["episodes"]) for r in rows]
    pairs = [(v, w) for v, w in pairs if v is not None and v == v]  # v == v: not NaN
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs and sum(w for _, w in pairs) else None


def third(rows: list[dict], part: str) -> list[dict]:
    """The first or last third of a run's steps (at least one)."""
    n = max(1, len(rows) // 3)
    return rows[:n] if part == "first" else rows[-n:]


def steady(rows: list[dict]) -> list[dict]:
    """The rows after the first (whose time includes filling the pipeline)."""
    return rows[1:] if len(rows) > 1 else rows


def rate_std_err(later: list[dict], start: float) -> float:
    """Standard error of episodes per second, sum(e_i) / sum(d_i), over training steps i (e_i episodes in
    d_i seconds since the step before; ``start`` is the first step's time): the ratio estimator's delta
    method, var ~ sum((e_i - r d_i)^2) / (n (n - 1) dbar^2). Steps are treated as independent; in
    asynchronous mode neighbours share episodes in flight, so this is a lower bound."""
    n = len(later)
    if n < 2:
        return math.nan
    times = [start] + [r["unix"] for r in later]
    d = [b - a for a, b in zip(times, times[1:])]
    e = [r["episodes"] for r in later]
    rate = sum(e) / sum(d)
    dbar = sum(d) / n
    return math.sqrt(sum((ei - rate * di) ** 2 for ei, di in zip(e, d)) / (n * (n - 1))) / dbar


def ratio_std_err(a: float, a_se: float, b: float, b_se: float) -> float:
    """Standard error of a / b for independent a and b (delta method)."""
    return abs(a / b) * math.sqrt((a_se / a) ** 2 + (b_se / b) ** 2)


def throughput(run: dict) -> dict:
    """Steady-state rates of one run: from its first training step to its last."""
    rows = run["rows"]
    if len(rows) < 2:
        raise SystemExit(f"job {run['job']}: {len(rows)} training steps in the window, too few to measure; "
                         "give it a longer window")
    span = rows[-1]["unix"] - rows[0]["unix"]
    later = rows[1:]
    episodes = sum(r["episodes"] for r in later)
    env_steps = sum(r["env_steps"] for r in later)
    busy = sum(sum(v for k, v in r["seconds"].items() if k != "wait") for r in later)
    slots = run["spec"]["rollout"]["concurrency"]
    env = run["envfleet"]
    return {
        "trajectories_per_hour": 3600 * episodes / span,
        "trajectories_per_hour_se": 3600 * rate_std_err(later, rows[0]["unix"]),
        "env_steps_per_s": env_steps / span,
        "browser_env_steps_per_s": env["steps"] / run["window_s"],
        "trainer_busy_fraction": busy / span,
        "browser_busy_fraction": (env["step_seconds"] + env["allocate_seconds"]) / (run["window_s"] * slots),
        "steps": len(rows),
        "seconds_measured": span,
    }


def stage_times(rows: list[dict]) -> dict:
    """Mean seconds per training step in rollout (the trainer waiting for its batch), training
    and weight sync (publishing the version to the engines)."""
    later = steady(rows)

    def mean(keys):
        return statistics.fmean(sum(r["seconds"].get(k, 0.0) for k in keys) for r in later)

    return {"rollout": mean(["wait"]), "train": mean(["forward_backward", "proximal", "optimizer", "checkpoint"]),
            "sync": mean(["publish"])}


def rejected_fraction(rows: list[dict], reason: str = "stale") -> float:
    rejected = sum(r.get("rejected", {}).get(reason, 0) for r in rows)
    used = sum(r["groups"] for r in rows)
    dropped = sum(sum(r.get("rejected", {}).values()) for r in rows)
    return rejected / max(1, used + dropped)
