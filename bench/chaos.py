"""``make bench-chaos``: an asynchronous GRPO job on the local stack while a seeded schedule SIGKILLs one
component after another, then what was lost, from Redis, the trainer's files and envfleet.

The stack is the one ``asyncwebrl up`` brings up (redis-server with AOF, envfleet, buffer, weightsync, api);
the job is submitted over REST as a user would (the tiny Qwen2.5-VL policy on ``miniwob/click-test``, one
step per episode, no warm-start; ``keep_zero_variance`` so the untrained policy's all-fail groups train).
About every ``--period`` seconds one of Chromium, envfleet, the buffer, redis-server, an engine, the
rollout gateway, the trainer and weightsync gets SIGKILL (its whole process group, as a container dies).
Each comes back as the deployment brings it back: the api's launcher restarts the job's processes
(engine, gateway, trainer), envfleet relaunches Chromium, and the soak itself runs ``asyncwebrl up`` again
after ``--restart-delay`` seconds for the stack's services (as Kubernetes restarts a pod): ``up`` starts
what is not running with the command line, ports and data directory the stack recorded in stack.json.
A kill waits until the previous one has recovered (the buffer accepted a new group and the trainer wrote
a new version after the killed part came back), so each recovery time belongs to one kill.

Afterwards it checks:
- the job succeeded at ``max_steps``;
- versions 1..max_steps were each written once (every manifest seen while the job ran; the trainer
  keeps only the newest few on disk), and metrics.jsonl repeats none;
- no batch id was trained into two versions, and no buffer entry into two batches that were trained;
- every group the buffer accepted was trained, rejected (stale, zero variance), dead-lettered or is
  still pending: ``lost`` = accepted - all of those, target 0;
- no browser context or lease is left (envfleet's sessions gauge, the job's running reports), no
  screenshot reference is held by anything but a pending group, and every unreferenced screenshot is
  reclaimed when due;
- after the job is deleted (``DELETE /v1/jobs/{id}?purge=true``) its screenshot references are zero, its
  blobs and every other key of it are gone, the global blob byte counter dropped by exactly its bytes,
  and a GET of the job answers 404;
- the AOF loads cleanly: ``redis-check-aof``, and a fresh redis-server loading a copy of it after the
  stack is down holds the job's counters as the live one had them (none: the purge is replayed too, so
  no key of the job is left).
It prints one JSON line: kills by component, recovery times by kind, the group accounting, batches
trained twice, and the throughput under chaos relative to a quiet run of the same length (``--quiet``,
on in the full form; ``--short``, the form ``make test`` runs, kills each component once and skips it).

Only public behaviour is used: the ``asyncwebrl`` command, the REST api, stack.json, Redis keys
(``asyncwebrl.common.keys``' layout), the checkpoint manifests, metrics.jsonl and /metrics.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import pathlib
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))
KINDS = ("chromium", "envfleet", "buffer", "redis", "engine", "gateway", "trainer", "weightsync")
SERVICES = ("redis", "envfleet", "buffer", "weightsync", "api")  # brought back by the soak (`asyncwebrl up`)
ROLES = {"engine": "engine", "gateway": "rollout", "trainer": "trainer"}  # brought back by the api's launcher
FINAL = ("succeeded", "failed", "cancelled")
CHROMIUM = os.environ.get("ASYNCWEBRL_CHROMIUM_PATH", "/usr/bin/chromium")


class SoakError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cli() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "asyncwebrl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "asyncwebrl.api.cli"]


def wait_for(what: str, check, timeout: float, interval: float = 0.25):
    """Polls ``check()`` until it returns something truthy; raises SoakError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SoakError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)


# --- processes -------------------------------------------------------------------------------------


def start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int | None, start: int | None = None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return rest[0] not in ("Z", "X") and (start is None or int(rest[19]) == start)


def sigkill_group(pid: int) -> None:
    """SIGKILL the process and its group (a service runs in its own session: its group is its container)."""
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def chromium_browsers(envfleet_pid: int) -> list[int]:
    """envfleet's Chromium browser processes (its descendants named chrom*, whose parent is not one)."""
    import psutil

    try:
        procs = psutil.Process(envfleet_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in procs:
        try:
            if "chrom" in p.name() and "chrom" not in p.parent().name() and "--type=" not in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return sorted(out)


def scrape(port: int) -> dict[str, float]:
    """A service's /metrics, samples summed by name (labels dropped)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] += s.value
    return out


# --- the stack -------------------------------------------------------------------------------------


class Stack:
    """``asyncwebrl up`` in ``run_dir``; its REST api, its Redis, its services' pids from stack.json."""

    def __init__(self, run_dir: pathlib.Path, contexts: int, max_restarts: int) -> None:
        self.run_dir = run_dir.resolve()
        # The launcher restarts a crashed job process --max-restarts times, then fails the job; a soak kills
        # them on purpose, and a Deployment restarts its containers without a limit.
        self.env = {**os.environ, "ASYNCWEBRL_MAX_RESTARTS": str(max_restarts)}
        self.up_args = ["--api-port", "0", "--browsers", "1", "--contexts", str(contexts), "--warm-reset",
                        "--chromium-path", CHROMIUM]
        self.doc: dict = {}
        self._redis = None
        self.up()

    def up(self) -> float:
        """Start what is not running (same command lines, ports and data); returns when all are ready."""
        started = time.monotonic()
        proc = subprocess.run([*cli(), "--run-dir", str(self.run_dir), "up", *self.up_args], env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        if proc.returncode != 0:
            raise SoakError(f"asyncwebrl up failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        self.doc = json.loads((self.run_dir / "stack.json").read_text())
        return time.monotonic() - started

    def down(self) -> None:
        subprocess.run([*cli(), "--run-dir", str(self.run_dir), "down"], env=self.env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=300, check=False)

    def comp(self, name: str) -> dict:
        return self.doc["components"][name]

    @property
    def prefix(self) -> str:
        return self.doc.get("key_prefix", "asyncwebrl:")

    def jp(self, jid: str) -> str:
        return f"{self.prefix}job:{jid}:"

    # REST --------------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        req = urllib.request.Request(self.doc["api_url"] + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.doc['api_token']}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def log(self, jid: str, role: str) -> str:
        req = urllib.request.Request(self.doc["api_url"] + f"/v1/jobs/{jid}/logs/{role}?tail_bytes={4 * 1024 * 1024}",
                                     headers={"Authorization": f"Bearer {self.doc['api_token']}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.read().decode(errors="replace")

    def job(self, jid: str) -> dict | None:
        """The job's view, or None while the api cannot answer (its Redis is down)."""
        try:
            return self.api("GET", f"/v1/jobs/{jid}", timeout=10)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    # Redis -------------------------------------------------------------------------------------

    def redis(self):
        import redis

        if self._redis is None:
            self._redis = redis.Redis(host="127.0.0.1", port=self.comp("redis")["port"],
                                      password=self.doc["redis_password"], socket_timeout=5,
                                      socket_connect_timeout=2)
        return self._redis

    def counters(self, jid: str) -> dict[str, int] | None:
        import redis

        try:
            raw = self.redis().hgetall(self.jp(jid) + "counters")
        except redis.RedisError:
            return None
        return {k.decode(): int(v) for k, v in raw.items()}

    def envfleet_metrics(self) -> dict[str, float] | None:
        try:
            return scrape(self.comp("envfleet")["http_port"])
        except (urllib.error.URLError, OSError, ValueError):
            return None


# --- what the job wrote ----------------------------------------------------------------------------


class Watcher:
    """Every version manifest the trainer writes (it keeps only the newest few), and a sample of the job's
    counters every second, in a background thread."""

    def __init__(self, stack: Stack, jid: str) -> None:
        self.stack, self.jid = stack, jid
        self.ckpt = stack.run_dir / "jobs" / jid / "checkpoints"
        self.seen: dict[int, list[dict]] = collections.defaultdict(list)  # version -> distinct manifests
        self.samples: list[dict] = []  # {t, version, accepted, consumed}
        self.first_version_at: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        try:
            entries = list(self.ckpt.iterdir())
        except OSError:
            return
        for d in entries:
            if not (d.name.startswith("v") and d.name[1:].isdigit()):
                continue
            try:
                m = json.loads((d / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            record = {"version": int(m["version"]), "batch_id": m.get("batch_id", ""),
                      "created_unix": m.get("created_unix"), "checksum": m.get("checksum")}
            with self._lock:
                known = self.seen[record["version"]]
                if record not in known:
                    known.append(record)
                    if self.first_version_at is None and record["version"] >= 1:
                        self.first_version_at = time.monotonic()

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self._scan()
            if tick % 4 == 0:
                c = self.stack.counters(self.jid)
                if c is not None:
                    with self._lock:
                        self.samples.append({"t": time.monotonic(), "version": c.get("version", 0),
                                             "accepted": c.get("accepted", 0), "consumed": c.get("consumed", 0)})
            tick += 1
            self._stop.wait(0.25)

    def latest(self) -> dict | None:
        with self._lock:
            return dict(self.samples[-1]) if self.samples else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._scan()

    def versions_between(self, t0: float, t1: float) -> int:
        """Versions whose manifest was written in [t0, t1] (monotonic times, from created_unix)."""
        offset = time.time() - time.monotonic()
        with self._lock:
            return sum(1 for recs in self.seen.values() for r in recs[:1]
                       if r["version"] >= 1 and r["created_unix"] and t0 <= r["created_unix"] - offset <= t1)


# --- the job ---------------------------------------------------------------------------------------


def job_spec(name: str, short: bool, max_steps: int) -> dict:
    rollout = ({"group_size": 4, "batch_groups": 2, "concurrency": 8} if short
               else {"group_size": 8, "batch_groups": 4, "concurrency": 16})
    return {
        "name": name,
        "model": {"path": "tiny/qwen2_5_vl"},
        "tasks": {"tasks": ["miniwob/click-test"], "difficulties": ["easy"], "train_seed": 1},
        "algorithm": {"max_steps": max_steps, "keep_zero_variance": True, "lr": 1e-5, "minibatches": 1,
                      "warm_start_steps": 0},
        "rollout": {"mode": "async", "max_staleness": 2, "temperature": 1.0, "max_new_tokens": 16,
                    "steps_easy": 1, **rollout},
        "resources": {"engines": 1, "engine_kind": "embedded", "device": "cpu"},
    }


def submit(stack: Stack, spec: dict) -> str:
    return stack.api("POST", "/v1/jobs", spec)["id"]


def wait_first_version(stack: Stack, jid: str, watcher: Watcher, timeout: float) -> float:
    def check():
        job = stack.job(jid)
        if job and job["state"] in FINAL:
            raise SoakError(f"job {jid} ended {job['state']} before its first version: {job.get('reason')}")
        return watcher.first_version_at

    return wait_for(f"job {jid}'s first version", check, timeout, interval=0.5)


def quiet_run(stack: Stack, spec: dict, window_s: float) -> dict:
    """The same job without kills: versions written in ``window_s`` after its first one."""
    jid = submit(stack, spec)
    watcher = Watcher(stack, jid)
    say(f"quiet run {jid}: {window_s:.0f}s from its first version")
    try:
        t1 = wait_first_version(stack, jid, watcher, 600)
        end = t1 + window_s
        while time.monotonic() < end:
            job = stack.job(jid)
            if job and job["state"] in FINAL:
                raise SoakError(f"quiet run {jid} ended {job['state']} inside its window: {job.get('reason')}")
            time.sleep(min(2.0, max(0.0, end - time.monotonic())))
        versions = watcher.versions_between(t1, end)
    finally:
        watcher.stop()
        stack.api("DELETE", f"/v1/jobs/{jid}", timeout=180)
    say(f"quiet run: {versions} versions in {window_s:.0f}s")
    return {"job": jid, "window_s": window_s, "versions": versions,
            "series": [x for x in series(watcher, t1) if x[0] <= window_s]}


# --- kills -----------------------------------------------------------------------------------------


def schedule(seed: int, n: int) -> list[str]:
    """``n`` kinds: seeded shuffles of every kind one after another, so each is killed as often as any."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        kinds = list(KINDS)
        rng.shuffle(kinds)
        out += kinds
    return out[:n]


def kill(stack: Stack, jid: str, kind: str, rng: random.Random) -> dict:
    """SIGKILL one component; returns what was killed."""
    if kind == "chromium":
        browsers = chromium_browsers(stack.comp("envfleet")["pid"])
        if not browsers:
            raise SoakError("no Chromium of envfleet's to kill")
        pid = rng.choice(browsers)
        before = (stack.envfleet_metrics() or {}).get("asyncwebrl_envfleet_browser_restarts_total", 0.0)
        sigkill_group(pid)
        return {"pid": pid, "restarts_before": before}
    if kind in SERVICES:
        c = stack.comp(kind)
        if not alive(c.get("pid"), c.get("start")):
            raise SoakError(f"{kind} is not running before its kill")
        browsers = chromium_browsers(c["pid"]) if kind == "envfleet" else []
        sigkill_group(c["pid"])
        wait_for(f"{kind} (pid {c['pid']}) to die", lambda: not alive(c["pid"]), 10, 0.05)
        # Chromium runs in a session of its own and may outlive envfleet (its pipe to the driver closed): what
        # is still there after 5 s the container's end would have killed with it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in browsers):
            time.sleep(0.1)
        orphans = [p for p in browsers if alive(p)]
        for p in orphans:
            sigkill_group(p)
        return {"pid": c["pid"], "orphaned_chromium": len(orphans)}
    role = ROLES[kind]
    job = wait_for(f"job {jid}'s processes", lambda: stack.job(jid), 60)
    procs = [p for p in job.get("processes", []) if p["role"] == role and p.get("running") and p.get("pid")]
    if not procs:
        raise SoakError(f"job {jid} has no running {role} to kill: {job.get('processes')}")
    pid = rng.choice(procs)["pid"]
    sigkill_group(pid)
    return {"pid": pid}


def back(stack: Stack, jid: str, kind: str, info: dict, delay: float, timeout: float) -> float:
    """Waits until the killed component runs again (restarting it where the soak is its supervisor);
    returns the monotonic time it was back."""
    if kind == "chromium":
        def relaunched():
            m = stack.envfleet_metrics()
            return m is not None and m.get("asyncwebrl_envfleet_browser_restarts_total", 0) > info["restarts_before"] \
                and m.get("asyncwebrl_envfleet_browsers", 0) >= 1
        wait_for("envfleet to relaunch Chromium", relaunched, timeout)
    elif kind in SERVICES:
        time.sleep(delay)  # the deployment's restart delay, not a synchronisation
        stack.up()
        if kind == "redis":
            stack._redis = None
    else:
        role = ROLES[kind]

        def restarted():
            job = stack.job(jid)
            if job and job["state"] in FINAL:
                raise SoakError(f"job {jid} ended {job['state']} after the {kind} kill: {job.get('reason')}")
            return job and any(p["role"] == role and p.get("running") and p.get("pid") != info["pid"]
                               for p in job.get("processes", []))
        wait_for(f"the launcher to restart the {role}", restarted, timeout, 0.5)
    return time.monotonic()


def recovered(stack: Stack, jid: str, watcher: Watcher, since: float, max_steps: int, timeout: float) -> float | None:
    """The monotonic time the pipeline moved again after ``since``: a group accepted and a version trained
    after it; None when the job reached max_steps first."""
    base = wait_for("a counters sample", lambda: next((s for s in reversed(watcher.samples) if s["t"] >= since),
                                                      None), 30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = watcher.latest()
        if s and s["version"] > base["version"] and s["accepted"] > base["accepted"]:
            return s["t"]
        if s and s["version"] >= max_steps:
            return None
        job = stack.job(jid)
        if job and job["state"] in FINAL:
            return None
        time.sleep(0.5)
    raise SoakError(f"the pipeline did not move again within {timeout:.0f}s")


# --- checks ----------------------------------------------------------------------------------------


def check_versions(watcher: Watcher, max_steps: int, metrics_path: pathlib.Path) -> dict:
    seen = watcher.seen
    versions = sorted(v for v in seen if v >= 1)
    repeats = sorted(v for v in versions if len(seen[v]) > 1)
    gaps = sorted(set(range(1, max_steps + 1)) - set(versions))
    rows = []
    if metrics_path.is_file():
        rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    row_versions = collections.Counter(r["version"] for r in rows)
    return {"first": versions[0] if versions else None, "last": versions[-1] if versions else None,
            "gaps": gaps, "repeats": repeats,
            "metrics_repeats": sorted(v for v, n in row_versions.items() if n > 1),
            # A trainer killed between writing a version and its log line acks that version's batch on
            # restart (its manifest names it) and goes on: the version is there, its log line is not.
            "metrics_rows_missing": sorted(set(versions) - set(row_versions)),
            "metrics_rows": len(rows)}


def check_batches(stack: Stack, jid: str, watcher: Watcher) -> dict:
    """Batch ids trained into more than one version, buffer entries trained in more than one batch, and
    acked batches that no version names (consumed, never trained)."""
    r = stack.redis()
    jp = stack.jp(jid)
    batch_versions: dict[str, list[int]] = collections.defaultdict(list)
    for v, recs in watcher.seen.items():
        for rec in recs:
            for b in filter(None, rec["batch_id"].split(",")):
                batch_versions[b].append(v)
    twice = {b: vs for b, vs in batch_versions.items() if len(vs) > 1}
    entries: collections.Counter[str] = collections.Counter()
    acked_in_versions = 0
    for b in batch_versions:
        ids, acked = r.hmget(jp + f"batch:{b}", ["ids", "acked"])
        entries.update((ids or b"").decode().split())
        acked_in_versions += int(acked or 0)
    acked_untrained = []
    for key in r.scan_iter(jp + "batch:*", count=1000):
        b = key.decode()[len(jp) + len("batch:"):]
        if r.hget(key, "state") == b"acked" and b not in batch_versions:
            acked_untrained.append(b)
    return {"batches_trained": len(batch_versions), "batches_trained_twice": len(twice),
            "twice": dict(list(twice.items())[:10]),
            "entries_trained": len(entries), "entries_trained_twice": sum(1 for n in entries.values() if n > 1),
            "groups_acked_by_trained_batches": acked_in_versions, "acked_batches_not_trained": len(acked_untrained)}


def group_accounting(stack: Stack, jid: str) -> dict:
    c = stack.counters(jid) or {}
    pending = stack.redis().xlen(stack.jp(jid) + "groups")
    rejected = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("rejected:")}
    out = {"accepted": c.get("accepted", 0), "trained": c.get("consumed", 0),
           "rejected_stale": rejected.get("stale", 0), "rejected_zero_variance": rejected.get("zero_variance", 0),
           "rejected_other": sum(v for k, v in rejected.items() if k not in ("stale", "zero_variance")),
           "dead_letter": c.get("dead_letter", 0), "pending": pending, "duplicate_puts": c.get("duplicate", 0)}
    out["lost"] = out["accepted"] - (out["trained"] + out["rejected_stale"] + out["rejected_zero_variance"]
                                     + out["rejected_other"] + out["dead_letter"] + out["pending"])
    return out


def gateway_losses(stack: Stack, jid: str) -> dict:
    """What the gateway lost before the buffer saw it (never accepted, so outside the group accounting):
    groups dropped and episodes left out of their group, by reason, from its log over REST."""
    import re

    text = stack.log(jid, "rollout")
    out: dict = {"groups_dropped": {}, "episodes_left_out": {}}
    for key, pattern in (("groups_dropped", r"group dropped \(([a-z_]+)\)"),
                         ("episodes_left_out", r"episode left out of its group \(([a-z_]+)\)")):
        out[key] = dict(collections.Counter(re.findall(pattern, text)))
    return out


def check_leases(stack: Stack, jid: str, timeout: float) -> dict:
    """envfleet's leased sessions and the job's running reports reach zero (a killed gateway's leases go
    when its owner stops renewing, envfleet's --owner-ttl-s)."""
    started = time.monotonic()

    def state():
        m = stack.envfleet_metrics() or {}
        now_ms = int(time.time() * 1000)
        running = {k.decode(): v.decode() for k, v in stack.redis().hgetall(stack.jp(jid) + "running").items()}
        fresh = {k: v for k, v in running.items() if int(v.split(":")[-1]) > now_ms and int(v.split(":")[0]) > 0}
        return {"sessions": m.get("asyncwebrl_envfleet_sessions"), "running_reports": len(fresh)}

    while True:
        s = state()
        if (s["sessions"] == 0 and s["running_reports"] == 0) or time.monotonic() - started > timeout:
            return {**s, "seconds_to_zero": round(time.monotonic() - started, 1)}
        time.sleep(1)


def check_blobs(stack: Stack, jid: str, timeout: float) -> dict:
    """Every screenshot reference is held by a group still pending; every unreferenced screenshot has a
    deadline and is reclaimed once it is due (the buffer's sweeper); the job's blob counters match."""
    r = stack.redis()
    jp = stack.jp(jid)
    held: collections.Counter[str] = collections.Counter()
    for _, fields in r.xrange(jp + "groups", "-", "+"):
        held.update(fields.get(b"blobs", b"").decode().split())
    refs, sizes = {}, 0
    for key in r.scan_iter(jp + "blob:*", count=1000):
        sha = key.decode().rsplit(":", 1)[1]
        n, size = r.hmget(key, ["refs", "size"])
        if n is None:
            continue
        refs[sha] = int(n)
        sizes += int(size or 0)
    unref = {k.decode(): v for k, v in r.zrange(jp + "blobs:unref", 0, -1, withscores=True)}
    stat = {k.decode(): int(v) for k, v in r.hgetall(jp + "blobs:stat").items()}
    wrong_refs = sorted(s for s in set(refs) | set(held) if refs.get(s, 0) != held.get(s, 0))
    no_deadline = sorted(s for s, n in refs.items() if n <= 0 and s not in unref)

    def due():
        sec, usec = r.time()
        now = sec * 1000 + usec // 1000
        return [s for s, d in r.zrange(jp + "blobs:unref", 0, -1, withscores=True) if d <= now - 1000]

    started = time.monotonic()
    while due() and time.monotonic() - started < timeout:
        time.sleep(1)
    return {"blobs": len(refs), "bytes": sizes, "stat_count": stat.get("count", 0), "stat_bytes": stat.get("bytes", 0),
            "references": sum(refs.values()), "references_by_pending_groups": sum(held.values()),
            "references_wrong": len(wrong_refs), "unreferenced_without_deadline": len(no_deadline),
            "unreferenced_awaiting_deadline": len(unref), "due_not_reclaimed": len(due())}


def blob_bytes_snapshot(stack: Stack, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """(the global blob byte counter, the sum of the per-job blob bytes of every job but ``skip``), read in
    one MULTI so a sweep between the two reads cannot skew them."""
    r = stack.redis()
    jobs = sorted(j.decode() for j in r.smembers(stack.prefix + "jobs") if j.decode() not in skip)
    with r.pipeline(transaction=True) as pipe:
        pipe.get(stack.prefix + "blobs:bytes")
        for j in jobs:
            pipe.hget(stack.jp(j) + "blobs:stat", "bytes")
        total, *per_job = pipe.execute()
    return int(total or 0), sum(int(b or 0) for b in per_job)


def job_keys(stack: Stack, jid: str) -> list[str]:
    """Every key under the job's prefix J (J ends in ':', so no other job's key matches)."""
    r = stack.redis()
    jp = stack.jp(jid)
    pattern = "".join("\\" + c if c in "*?[]\\^" else c for c in jp) + "*"
    return sorted(k for k in (k.decode() for k in r.scan_iter(pattern, count=1000)) if k.startswith(jp))


def purge_and_check(stack: Stack, jid: str) -> dict:
    """``DELETE /v1/jobs/{id}?purge=true``, then from Redis: no key of the job (nor of its warm-start) is left,
    so no screenshot and no reference; the global blob byte counter dropped by exactly the bytes the purge
    reports, which are the job's own (other jobs' sweeps between the snapshots accounted for); the job's
    record is gone (GET answers 404)."""
    r = stack.redis()
    jobs = (jid, f"{jid}-warm")
    job_bytes = sum(int(r.hget(stack.jp(j) + "blobs:stat", "bytes") or 0) for j in jobs)
    job_refs = sum(int(r.hget(k, "refs") or 0) for j in jobs for k in job_keys(stack, j) if ":blob:" in k)
    total_before, others_before = blob_bytes_snapshot(stack, jobs)
    reply = stack.api("DELETE", f"/v1/jobs/{jid}?purge=true", timeout=300)
    total_after, others_after = blob_bytes_snapshot(stack, jobs)
    left = [k for j in jobs for k in job_keys(stack, j)]
    blobs_left = [k for k in left if ":blob:" in k]
    refs_left = sum(int(r.hget(k, "refs") or 0) for k in blobs_left)
    try:
        stack.api("GET", f"/v1/jobs/{jid}")
        get_status = 200
    except urllib.error.HTTPError as exc:
        get_status = exc.code
    deleted = reply.get("deleted") or {}
    return {"state": reply.get("state"), "deleted": deleted, "job_bytes_before": job_bytes,
            "job_references_before": job_refs, "blob_bytes_all_before": total_before,
            "blob_bytes_all_after": total_after, "other_jobs_bytes_swept": others_before - others_after,
            "keys_left": len(left), "blobs_left": len(blobs_left), "references_left": refs_left,
            "in_job_set": any(r.sismember(stack.prefix + "jobs", j) for j in jobs), "get_status": get_status}


def check_aof(stack: Stack, jid: str, counters: dict) -> dict:
    """After ``down`` (no writer): redis-check-aof, then a fresh redis-server loading a copy of the AOF."""
    aof_dir = stack.run_dir / "redis" / "appendonlydir"
    out: dict = {"dir": str(aof_dir)}
    manifest = next(aof_dir.glob("*.manifest"), None)
    tool = shutil.which("redis-check-aof")
    if tool and manifest is not None:
        proc = subprocess.run([tool, str(manifest)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120)
        out["redis_check_aof"] = {"rc": proc.returncode, "valid": proc.returncode == 0 and "valid" in proc.stdout,
                                  "tail": proc.stdout.strip().splitlines()[-1:]}
    import redis

    with tempfile.TemporaryDirectory(prefix="chaos-aof-") as tmp:
        shutil.copytree(aof_dir, pathlib.Path(tmp) / "appendonlydir")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                                   "--bind", "127.0.0.1", "--dir", tmp, "--appendonly", "yes", "--save", "",
                                   "--appenddirname", "appendonlydir", "--daemonize", "no"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

            def loaded():
                if server.poll() is not None:
                    return "exited"
                try:
                    return client.ping() and "ok"
                except redis.RedisError:  # not listening yet, or LOADING
                    return None
            state = wait_for("a fresh redis-server to load the AOF", loaded, 120)
            if state == "ok":
                raw = client.hgetall(stack.jp(jid) + "counters")
                out["loaded"] = True
                out["keys"] = client.dbsize()
                out["counters_match"] = {k.decode(): int(v) for k, v in raw.items()} == counters
                # The purge is in the AOF too: the replayed data has no key of the job.
                out["job_keys"] = sum(1 for k in client.scan_iter(stack.jp(jid) + "*", count=1000)
                                      if k.decode().startswith(stack.jp(jid)))
            else:
                out["loaded"] = False
                out["log"] = (server.stdout.read() or "")[-2000:]
        finally:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(20)
                except subprocess.TimeoutExpired:
                    server.kill()
    return out


# --- the soak --------------------------------------------------------------------------------------


def series(watcher: Watcher, t0: float) -> list[list]:
    """[seconds since ``t0``, version, groups accepted], one a second."""
    return [[round(x["t"] - t0, 1), x["version"], x["accepted"]] for x in watcher.samples]


def plot(path: pathlib.Path, chaos: list[list], kills: list[dict], quiet: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot([x[0] for x in chaos], [x[1] for x in chaos], color="#1f5fa8", lw=2, label="version under chaos")
    if quiet and quiet.get("series"):
        ax.plot([x[0] for x in quiet["series"]], [x[1] for x in quiet["series"]], color="#1a8a3a", lw=1.5,
                label=f"version, quiet run ({quiet['versions']} in {quiet['window_s']:.0f}s)")
    ax2 = ax.twinx()
    ax2.plot([x[0] for x in chaos], [x[2] for x in chaos], color="#999", lw=1, label="groups accepted under chaos")
    ax2.set_ylabel("groups accepted")
    colours = dict(zip(KINDS, plt.cm.tab10.colors))
    for k in kills:
        ax.axvline(k["at_s"], color=colours[k["kind"]], lw=1, ls="--")
        ax.text(k["at_s"], 0, k["kind"], rotation=90, fontsize=7, color=colours[k["kind"]], va="bottom", ha="right")
    ax.set_xlabel("seconds since the job's first version")
    ax.set_ylabel("version")
    ax.set_title("chaos soak: SIGKILL one component at a time (dashed lines)")
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def soak(args) -> dict:
    wall = time.monotonic()
    run_dir = pathlib.Path(args.run_dir or tempfile.mkdtemp(prefix="chaos-")).resolve()
    out_dir = pathlib.Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    say(f"stack in {run_dir}")
    stack = Stack(run_dir, contexts=8 if args.short else 16, max_restarts=args.max_restarts)
    result: dict = {"bench": "chaos", "form": "short" if args.short else "full", "seed": args.seed,
                    "period_s": args.period, "restart_delay_s": args.restart_delay, "run_dir": str(run_dir)}
    try:
        quiet = None
        if args.quiet:
            quiet = quiet_run(stack, job_spec("chaos-quiet", args.short, 0), args.duration)
        max_steps = args.max_steps or (math.ceil(quiet["versions"] * 1.15) + 2 if quiet else 60)
        spec = job_spec("chaos", args.short, max_steps)
        jid = submit(stack, spec)
        watcher = Watcher(stack, jid)
        result.update(job=jid, max_steps=max_steps, spec=spec)
        say(f"chaos job {jid}: max_steps {max_steps}")
        t0 = wait_first_version(stack, jid, watcher, 600)
        n = args.kills or max(1, round(args.duration / args.period))
        plan = schedule(args.seed, n)
        say(f"schedule (seed {args.seed}): {' '.join(plan)}")
        kills: list[dict] = []
        last_done = t0
        for i, kind in enumerate(plan):
            # On the schedule, but never before the last kill has recovered (each recovery is its own).
            at = max(t0 + (i + 1 + rng.uniform(-0.2, 0.2)) * args.period, last_done + 2.0)
            if args.every_versions:
                # By the job's progress, not the clock: a fast machine must not finish the job before
                # every component has been killed, nor a slow one be killed faster than it recovers.
                at = last_done + 2.0
                target = (i + 1) * args.every_versions
                wait_for(f"version {target} of job {jid}", lambda: (v := watcher.latest()) and v["version"] >= target
                         or (stack.job(jid) or {}).get("state") in FINAL, args.recover_timeout, 0.5)
            elif not args.kills and at > t0 + args.duration:
                break
            while time.monotonic() < at:
                time.sleep(min(0.5, at - time.monotonic()))
            s = watcher.latest()
            if s and s["version"] >= max_steps - 2:
                say(f"the job is at version {s['version']} of {max_steps}: no more kills")
                break
            t = time.monotonic()
            info = kill(stack, jid, kind, rng)
            say(f"kill {i + 1}/{len(plan)}: {kind} (pid {info['pid']})")
            back_at = back(stack, jid, kind, info, args.restart_delay, args.recover_timeout)
            done = recovered(stack, jid, watcher, back_at, max_steps, args.recover_timeout)
            record = {"kind": kind, "t": t, "at_s": round(t - t0, 1), "back_s": round(back_at - t, 1),
                      "recover_s": round(done - t, 1) if done else None,
                      "version_at_kill": (s or {}).get("version"), **{k: v for k, v in info.items() if k != "pid"}}
            kills.append(record)
            say(f"  {kind}: back after {record['back_s']}s, pipeline moving after {record['recover_s']}s")
            last_done = done or time.monotonic()
        # The job to its end (kills have stopped).
        def ended():
            job = stack.job(jid)
            return job if job and job["state"] in FINAL else None
        job = wait_for(f"job {jid} to end", ended, args.end_timeout, 2)
        watcher.stop()
        say(f"job {jid} {job['state']}: {job.get('reason')}")
        window = min(args.duration, time.monotonic() - t0)
        chaos_versions = watcher.versions_between(t0, t0 + window)

        ckpt = run_dir / "jobs" / jid / "checkpoints"
        versions = check_versions(watcher, max_steps, ckpt / "metrics.jsonl")
        batches = check_batches(stack, jid, watcher)
        groups = group_accounting(stack, jid)
        restarts = {p["role"]: p.get("restarts", 0) for p in job.get("processes", [])}
        gateway = gateway_losses(stack, jid)
        stack.api("DELETE", f"/v1/jobs/{jid}", timeout=180)  # a finished job: nothing to stop, its data stays
        leases = check_leases(stack, jid, args.lease_timeout)
        blobs = check_blobs(stack, jid, 30)  # while the job's data is there: every reference held by a group
        purged = purge_and_check(stack, jid)  # then the job deleted: no reference, no blob, bytes given back
        counters = stack.counters(jid) or {}  # {} after the purge; the AOF must replay to the same
        stack.down()
        aof = check_aof(stack, jid, counters)

        by_kind = collections.Counter(k["kind"] for k in kills)
        recover = {}
        for kind in KINDS:
            times = [k["recover_s"] for k in kills if k["kind"] == kind and k["recover_s"] is not None]
            backs = [k["back_s"] for k in kills if k["kind"] == kind]
            if backs:
                recover[kind] = {"kills": len(backs), "back_s_mean": round(sum(backs) / len(backs), 1),
                                 "recover_s_mean": round(sum(times) / len(times), 1) if times else None,
                                 "recover_s_max": max(times) if times else None}
        collateral = {role: restarts.get(role, 0) - by_kind.get(kind, 0) for kind, role in ROLES.items()}
        throughput = {"chaos_window_s": round(window, 1), "chaos_versions": chaos_versions,
                      "chaos_versions_per_min": round(60 * chaos_versions / window, 2) if window else None}
        if quiet:
            throughput |= {"quiet_window_s": quiet["window_s"], "quiet_versions": quiet["versions"],
                           "quiet_versions_per_min": round(60 * quiet["versions"] / quiet["window_s"], 2),
                           "relative": round((chaos_versions / window) / (quiet["versions"] / quiet["window_s"]), 3)
                           if quiet["versions"] and window else None}
        checks = {
            "job_reached_max_steps": job["state"] == "succeeded" and versions["last"] == max_steps,
            "every_kind_killed": set(by_kind) == set(KINDS),
            "every_kill_recovered": all(k["recover_s"] is not None for k in kills[:-1]),
            "versions_no_gap": not versions["gaps"],
            "versions_no_repeat": not versions["repeats"] and not versions["metrics_repeats"],
            "no_batch_trained_twice": batches["batches_trained_twice"] == 0 and batches["entries_trained_twice"] == 0,
            "trained_groups_match_acks": batches["acked_batches_not_trained"] == 0
                                         and batches["entries_trained"] == groups["trained"],
            "no_group_lost": groups["lost"] == 0,
            "no_lease_left": leases["sessions"] == 0 and leases["running_reports"] == 0,
            "screenshot_references_exact": blobs["references_wrong"] == 0
                                           and blobs["unreferenced_without_deadline"] == 0
                                           and blobs["stat_count"] == blobs["blobs"]
                                           and blobs["stat_bytes"] == blobs["bytes"],
            "due_screenshots_reclaimed": blobs["due_not_reclaimed"] == 0,
            "job_deleted": purged["state"] == "deleted" and purged["get_status"] == 404 and not purged["in_job_set"],
            "screenshot_references_zero_after_delete": purged["references_left"] == 0
                                                        and purged["blobs_left"] == 0 and purged["keys_left"] == 0,
            "blob_bytes_given_back": purged["deleted"].get("blob_bytes", 0) == purged["job_bytes_before"]
                                     and purged["blob_bytes_all_before"] - purged["blob_bytes_all_after"]
                                     == purged["job_bytes_before"] + purged["other_jobs_bytes_swept"],
            "aof_loads_cleanly": bool(aof.get("loaded")) and bool(aof.get("counters_match"))
                                 and aof.get("job_keys") == 0
                                 and aof.get("redis_check_aof", {}).get("valid", True),
        }
        if not args.kills:
            checks["every_kind_killed"] = checks["every_kind_killed"] or len(kills) < len(KINDS)
        result |= {
            "kills": dict(sorted(by_kind.items())), "kills_total": len(kills),
            "groups_lost": groups["lost"], "batches_trained_twice": batches["batches_trained_twice"],
            "recovery": recover, "throughput": throughput, "groups": groups, "batches": batches,
            "versions": versions, "job_state": job["state"], "job_reason": job.get("reason"),
            "gateway_losses": gateway, "launcher_restarts": restarts, "collateral_restarts": collateral,
            "leases": leases, "blobs": blobs, "purge": purged,
            "aof": aof, "kill_log": [{k: v for k, v in rec.items() if k != "t"} for rec in kills],
            "checks": checks, "passed": all(checks.values()),
        }
        if quiet:
            result["quiet"] = quiet
        result["series"] = series(watcher, t0)
        plot(out_dir / f"{args.name}.png", result["series"], result["kill_log"], quiet)
    finally:
        stack.down()
    result["wall_s"] = round(time.monotonic() - wall, 1)
    return result


def machine() -> dict:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the form `make test` runs: smaller groups, each "
                   "component killed once (--kills 8) every 12 versions (--every-versions), no quiet run")
    p.add_argument("--seed", type=int, default=24)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of chaos after the first version "
                   "(and the quiet run's length)")
    p.add_argument("--period", type=float, default=45.0, help="seconds between kills (+-20%%)")
    p.add_argument("--kills", type=int, default=0, help="a fixed number of kills instead of --duration's")
    p.add_argument("--every-versions", type=int, default=0,
                   help="kill when the job has trained this many more versions (after the last recovery) "
                        "instead of by --period")
    p.add_argument("--max-steps", type=int, default=0, help="the job's max_steps (default: from the quiet run)")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=None,
                   help="run the quiet job first (default: on in the full form)")
    p.add_argument("--restart-delay", type=float, default=5.0, help="seconds before the soak restarts a "
                   "service it killed")
    p.add_argument("--recover-timeout", type=float, default=240.0)
    p.add_argument("--lease-timeout", type=float, default=90.0)
    p.add_argument("--end-timeout", type=float, default=1800.0)
    p.add_argument("--max-restarts", type=int, default=100)
    p.add_argument("--run-dir", default="", help="the stack's run directory (default: a new temporary one)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--name", default="chaos", help="result file stem: <out-dir>/<name>.json and .png")
    args = p.parse_args(argv)
    if args.short:
        args.kills = args.kills or len(KINDS)
        args.period = 15.0 if args.period == 45.0 else args.period
        args.restart_delay = 2.0 if args.restart_delay == 5.0 else args.restart_delay
        args.every_versions = args.every_versions or 12
        # Room for every kill and two spacings after the last.
        args.max_steps = args.max_steps or args.every_versions * (args.kills + 2)
    if args.quiet is None:
        args.quiet = not args.short
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        result = soak(args)
    except SoakError as exc:
        result = {"bench": "chaos", "error": str(exc), "passed": False, "seed": args.seed}
    result |= {"date": started.isoformat(timespec="seconds"), "machine": machine(),
               "command": "make bench-chaos" if not args.short else "python bench/chaos.py --short"}
    out = pathlib.Path(args.out_dir) / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: result.get(k) for k in ("bench", "form", "passed", "error", "job", "max_steps", "kills",
                                          "groups_lost", "batches_trained_twice", "recovery", "throughput",
                                          "groups", "gateway_losses", "collateral_restarts", "checks", "wall_s")
               if k in result}
    print(json.dumps(summary))
    return 0 if result.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
