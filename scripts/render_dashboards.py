"""Render every Grafana dashboard of charts/dashboards to docs/dashboards/<name>.png from real data.

It runs a short local training job on the CPU with the repository's services as real processes
(Redis, envfleet with Chromium, buffer, weightsync, api, an engine, a trainer and a rollout gateway,
plus a redis_exporter when one is installed), scraped every 2 s by a real Prometheus (the Debian
``prometheus`` package) whose configuration follows the scrape contract of charts/README.md and
loads charts/rules. The job is the demo recipe, shortened: a supervised warm-start on the reference
agent's demonstrations of MiniWoB click-test, then asynchronous GRPO publishing every version
through weightsync. Then every panel's expressions are evaluated by that Prometheus (query_range,
``$job_id`` = all, ``$__rate_interval`` = 1m) and drawn with matplotlib in the dashboard's grid.

    .venv/bin/python scripts/render_dashboards.py                # about 5 + --minutes minutes
    .venv/bin/python scripts/render_dashboards.py --minutes 2 --only trainer,overview
    .venv/bin/python scripts/render_dashboards.py --prometheus http://127.0.0.1:9090 --since 2h  # no run

Panels with no data (nothing happened: no rubric judging, no faults) are drawn as "No data", as
Grafana does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "charts" / "dashboards"
RULES = ROOT / "charts" / "rules"
OUT = ROOT / "docs" / "dashboards"
TOKEN = "render-token"
PREFIX = "render:"
TASKS = ["--tasks", "miniwob/click-test", "--steps-easy", "1", "--max-new-tokens", "48", "--temperature", "1.0"]
RATE_INTERVAL = "1m"
SCRAPE_S = 2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the run -------------------------------------------------------------------------------------------

class Run:
    """The local stack, a Prometheus scraping it, and the job's processes."""

    def __init__(self, work: pathlib.Path, prom_port: int) -> None:
        from asyncwebrl.common.localstack import RedisServer, ServiceProcess, free_port

        self.work = work
        self.sd = work / "sd"
        self.sd.mkdir(parents=True, exist_ok=True)
        self.logs = work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.procs: list = []
        self.others: list[subprocess.Popen] = []
        (work / "redis").mkdir(exist_ok=True)
        self.redis = RedisServer(work / "redis")
        self.env = {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": self.redis.password}
        self.common = ["--redis-url", self.redis.url, "--key-prefix", PREFIX, "--log-format", "text"]
        chromium = os.environ.get("ASYNCWEBRL_CHROMIUM_PATH", "/usr/bin/chromium")
        self.buffer = self._service("buffer", "--blob-release-grace-s", "0", "--blob-budget-bytes", str(4 << 20))
        self.buffer.wait_ready(120)
        # envfleet has no Redis: its screenshots go through the buffer.
        self.envfleet = self._service("envfleet", "--browsers", "1", "--contexts-per-browser", "8",
                                      "--task-sources", "miniwob", "--chromium-path", chromium, "--warm-reset",
                                      common=["--buffer-target", self.buffer.target, "--log-format", "text"])
        self.weightsync = self._service("weightsync", "--checkpoint-roots", str(work), "--reconcile-interval-s", "1")
        self.api_port = free_port()
        self.api = ServiceProcess("api", [*self.common, "--api-port", str(self.api_port)],
                                  {**self.env, "ASYNCWEBRL_API_TOKEN": TOKEN}, self.logs / "api.log")
        self.procs.append(self.api)
        for p in (self.envfleet, self.buffer, self.weightsync, self.api):
            p.wait_ready(120)
        exporter = shutil.which("prometheus-redis-exporter") or shutil.which("redis_exporter")
        self.exporter_port = free_port() if exporter else None
        if exporter:
            self.others.append(subprocess.Popen(
                [exporter, "-redis.addr", f"redis://127.0.0.1:{self.redis.port}",
                 "-web.listen-address", f"127.0.0.1:{self.exporter_port}"],
                env={**os.environ, "REDIS_PASSWORD": self.redis.password},
                stdout=open(self.logs / "redis_exporter.log", "wb"), stderr=subprocess.STDOUT))
        self.prom_url = f"http://127.0.0.1:{prom_port}"
        self._start_prometheus(prom_port)

    def _service(self, name: str, *args: str, job: str | None = None, common: list[str] | None = None):
        from asyncwebrl.common.localstack import ServiceProcess

        extra = ["--job-id", job] if job else []
        stem = f"{name}{'-' + job if job else ''}"
        logfile, n = self.logs / f"{stem}.log", 0
        while logfile.exists():  # a restarted process keeps the log of the one before
            n += 1
            logfile = self.logs / f"{stem}-{n}.log"
        p = ServiceProcess(name, [*(self.common if common is None else common), *extra, *args], self.env, logfile)
        self.procs.append(p)
        if job:
            self._target(name, job, p.http_port)
            p.sd_entry = (name, job, p.http_port)
        return p

    def _target(self, role: str, job: str, port: int, add: bool = True) -> None:
        """A per-job process joins (or leaves) Prometheus' file discovery, labelled with its job: a finished
        process goes away, as a finished pod does, instead of counting as a target that is down."""
        path = self.sd / f"{role}.json"
        targets = json.loads(path.read_text()) if path.exists() else []
        entry = {"targets": [f"127.0.0.1:{port}"], "labels": {"job_id": job}}
        targets = [*targets, entry] if add else [t for t in targets if t != entry]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(path)

    def retire(self, proc) -> None:
        proc.stop(timeout=60)
        role, job, port = proc.sd_entry
        self._target(role, job, port, add=False)

    def _start_prometheus(self, port: int) -> None:
        exe = shutil.which("prometheus")
        if not exe:
            sys.exit("prometheus missing: apt-get install prometheus (scripts/bootstrap.sh installs it)")
        # The scrape contract (charts/README.md): job="asyncwebrl-<service>", per-job series carry job_id;
        # the shared services' own "job" label (the RL job) arrives as exported_job and becomes job_id.
        to_job_id = [{"source_labels": ["exported_job"], "regex": "(.+)", "target_label": "job_id",
                      "replacement": "$1", "action": "replace"},
                     {"regex": "exported_job", "action": "labeldrop"}]
        scrape = []
        for name, p in (("envfleet", self.envfleet), ("buffer", self.buffer), ("weightsync", self.weightsync),
                        ("api", self.api)):
            cfg = {"job_name": f"asyncwebrl-{name}", "static_configs": [{"targets": [f"127.0.0.1:{p.http_port}"]}]}
            if name in ("buffer", "weightsync"):
                cfg["metric_relabel_configs"] = to_job_id
            scrape.append(cfg)
        for role in ("engine", "trainer", "rollout"):
            (self.sd / f"{role}.json").write_text("[]")
            scrape.append({"job_name": f"asyncwebrl-{role}",
                           "file_sd_configs": [{"files": [str(self.sd / f"{role}.json")], "refresh_interval": "5s"}]})
        if self.exporter_port:
            scrape.append({"job_name": "redis-exporter",
                           "static_configs": [{"targets": [f"127.0.0.1:{self.exporter_port}"]}]})
        config = {"global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                             "evaluation_interval": "10s"},
                  "rule_files": [str(p) for p in sorted(RULES.glob("*.yaml"))],
                  "scrape_configs": scrape}
        path = self.work / "prometheus.yml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.others.append(subprocess.Popen(
            [exe, f"--config.file={path}", f"--storage.tsdb.path={self.work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
            stdout=open(self.logs / "prometheus.log", "wb"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.prom_url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        sys.exit(f"prometheus not ready; see {self.logs / 'prometheus.log'}")

    def configure(self, job: str, batch_groups: int, eta: int, keep: bool) -> None:
        from asyncwebrl.common.grpcclient import channel
        from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

        ch = channel(self.buffer.target, TOKEN)
        buffer_pb2_grpc.BufferServiceStub(ch).ConfigureJob(buffer_pb2.ConfigureJobRequest(
            job_id=job, batch_groups=batch_groups, max_staleness=eta, keep_zero_variance=keep), timeout=30)
        ch.close()

    def engine(self, job: str, model: pathlib.Path):
        from asyncwebrl.common.localstack import EngineProcess

        e = EngineProcess(["--model-path", str(model), "--model-roots", str(self.work), "--device", "cpu",
                           "--registry-redis-url", self.redis.url, "--key-prefix", PREFIX, "--job-id", job,
                           "--endpoint-id", f"{job}-engine-0", "--heartbeat-s", "1", "--max-batch-size", "16"],
                          self.logs / f"engine-{job}.log",
                          env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": self.redis.password})
        self.procs.append(e)
        self._target("engine", job, e.port)
        e.sd_entry = ("engine", job, e.port)
        return e

    def gateway(self, job: str, *args: str):
        p = self._service("rollout", "--gateway-id", f"{job}-gw", "--envfleet-target", self.envfleet.target,
                          "--buffer-target", self.buffer.target, *TASKS, *args, job=job)
        p.args = args
        return p

    def trainer(self, job: str, *args: str):
        p = self._service("trainer", "--buffer-target", self.buffer.target, "--device", "cpu", *args, job=job)
        p.args = args
        return p

    def stop_jobs(self) -> None:
        """The job's processes (gateways first), leaving the shared services and Prometheus up."""
        for p in reversed(self.procs[4:]):
            with contextlib.suppress(Exception):
                p.stop(timeout=30)

    def close(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop(timeout=30)
        for p in self.others:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
            if p.poll() is None:
                p.kill()
        self.redis.stop()


def train(run: Run, minutes: float, warm_steps: int) -> None:
    from asyncwebrl.common.models.tiny import SHIPPED
    from asyncwebrl.common.weights import latest_version

    base = run.work / "models" / "base"
    shutil.copytree(SHIPPED / "qwen2_5_vl", base)
    # 1. The warm-start: the reference agent's episodes fitted by --objective sft (the random tiny model
    #    cannot write a tool call).
    batch = 8
    run.configure("demo-warm", batch, 64, True)
    log(f"warm-start: {warm_steps} supervised steps on demonstrations")
    demos = run.gateway("demo-warm", "--model-path", str(base), "--demonstrations", "--group-size", "1",
                        "--max-groups", str(math.ceil(1.1 * warm_steps * batch) + 2),
                        "--max-concurrent-episodes", "8", "--seed", "1")
    sft = run.trainer("demo-warm", "--objective", "sft", "--model-path", str(base), "--checkpoint-dir",
                      str(run.work / "warm"), "--batch-groups", str(batch), "--max-staleness", "64",
                      "--max-steps", str(warm_steps), "--lr", "3e-3", "--epochs", "8", "--minibatches", "4",
                      "--publish", "none", "--full-every", str(warm_steps), "--seed", "1")
    if sft.proc.wait(1800) != 0:
        sys.exit(f"warm-start trainer failed: {sft.logs()[-2000:]}")
    run.retire(sft)
    run.retire(demos)
    warm = latest_version(run.work / "warm")[1]
    # 2. Asynchronous GRPO with 1/k, every version published through weightsync.
    log(f"GRPO for {minutes:g} minutes")
    run.configure("demo", 4, 2, False)
    engine = run.engine("demo", warm)
    engine.wait_ready()
    trainer = run.trainer("demo", "--model-path", str(warm), "--checkpoint-dir", str(run.work / "rl"),
                          "--batch-groups", "4", "--max-staleness", "2", "--lr", "1e-3", "--minibatches", "2",
                          "--warmup-steps", "5", "--step-norm", "constant", "--publish", "weightsync",
                          "--weightsync-target", run.weightsync.target, "--full-every", "1000", "--seed", "1")
    gateway = run.gateway("demo", "--model-path", str(warm), "--group-size", "8", "--max-concurrent-episodes", "8",
                          "--seed", "1001")
    deadline = time.monotonic() + 60 * minutes
    restarts = 0
    while time.monotonic() < deadline:
        for p in (trainer, gateway):
            if p.proc.poll() is None:
                continue
            # As the api's local launcher does: a crashed child starts again (the trainer resumes from its
            # checkpoints), a bounded number of times.
            restarts += 1
            if restarts > 3:
                sys.exit(f"job processes keep crashing; see {run.logs}")
            log(f"{p.name} exited with {p.proc.returncode} (see {p.log_path}); starting it again")
            run.retire(p)
            if p is trainer:
                trainer = run.trainer("demo", *trainer.args)
            else:
                gateway = run.gateway("demo", *gateway.args)
        time.sleep(5)
    found = latest_version(run.work / "rl", verify=False)
    log(f"trained to version {found[0].version if found else 0}")
    time.sleep(3 * SCRAPE_S)  # the last scrapes


# --- Prometheus queries --------------------------------------------------------------------------------

def substitute(expr: str, range_s: float) -> str:
    values = {"job_id": ".*", "__rate_interval": RATE_INTERVAL, "__interval": "10s", "__range": f"{int(range_s)}s"}
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], expr)


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{params}", timeout=60) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt: str, metric: dict) -> str:
    if not fmt:
        labels = {k: v for k, v in metric.items() if k != "__name__"}
        return metric.get("__name__", "") + ("{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                                             if labels else "")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


# --- drawing -------------------------------------------------------------------------------------------

BG, PANEL, EDGE, TEXT, MUTED, GRID = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a",
           "#37872d", "#ff780a", "#c4162a", "#8f3bb8"]
COL_PX, ROW_PX = 80, 34


def fmt_value(v: float, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "percentunit":
        return f"{100 * v:.1f}%" if abs(v) < 0.1 else f"{100 * v:.0f}%"
    if unit in ("bytes", "Bps"):
        n, i = abs(v), 0
        units = ["B", "KiB", "MiB", "GiB", "TiB"]
        while n >= 1024 and i < len(units) - 1:
            n, i = n / 1024, i + 1
        s = f"{math.copysign(n, v):.3g} {units[i]}"
        return s + "/s" if unit == "Bps" else s
    if unit == "s":
        if v == 0:
            return "0 s"
        return f"{v * 1000:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    a = abs(v)
    for scale, tag in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{v / scale:.3g}{tag}{suffix}"
    if a == 0:
        return "0" + suffix
    return (f"{v:.3g}" if a < 1000 else f"{v:.0f}") + suffix


def draw(board: dict, prom: str, start: float, end: float, path: pathlib.Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    top_px = 60
    W, H = 24 * COL_PX, rows * ROW_PX + top_px + 10
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100, facecolor=BG)
    when = f"{dt.datetime.fromtimestamp(start):%Y-%m-%d %H:%M} - {dt.datetime.fromtimestamp(end):%H:%M}"
    fig.text(10 / W, 1 - 28 / H, board["title"], color=TEXT, fontsize=17, weight="bold", va="center")
    fig.text(1 - 10 / W, 1 - 28 / H, f"{when}   job_id = All   (local CPU run, scripts/render_dashboards.py)",
             color=MUTED, fontsize=10, va="center", ha="right")
    step = max(SCRAPE_S, (end - start) / 300)
    stats = {"panels": 0, "empty": []}

    def box(g: dict) -> tuple[float, float, float, float]:
        x0, y0 = g["x"] * COL_PX + 4, top_px + g["y"] * ROW_PX + 4
        w, h = g["w"] * COL_PX - 8, g["h"] * ROW_PX - 8
        return x0 / W, 1 - (y0 + h) / H, w / W, h / H

    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            x, y, w, h = box(g)
            fig.text(x + 2 / W, y + h / 2, p["title"], color=TEXT, fontsize=13, weight="bold", va="center")
            continue
        stats["panels"] += 1
        x, y, w, h = box(g)
        fig.patches.append(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.002", zorder=-10,
                                          transform=fig.transFigure, facecolor=PANEL, edgecolor=EDGE, lw=1))
        fig.text(x + 8 / W, y + h - 14 / H, p["title"], color=TEXT, fontsize=10.5, weight="bold", va="center")
        unit = p["fieldConfig"]["defaults"].get("unit", "short")
        series = []
        for t in p["targets"]:
            for r in query_range(prom, substitute(t["expr"], end - start), start, end, step):
                ts = [float(a) for a, _ in r["values"]]
                vs = [float(b) if b not in ("NaN", "+Inf", "-Inf") else math.nan for _, b in r["values"]]
                series.append((legend(t.get("legendFormat", ""), r["metric"]), ts, vs, r["metric"]))
        legend_rows = 0
        if p["type"] == "timeseries":
            legend_rows = min(3, math.ceil(len(series) / max(1, g["w"] // 4))) if series else 0
        pad_top, pad_bottom = 28, 26 + 14 * legend_rows
        inner = (x + 76 / W, y + pad_bottom / H, w - 88 / W, h - (pad_top + pad_bottom) / H)
        if not series or all(all(math.isnan(v) for v in s[2]) for s in series):
            stats["empty"].append(p["title"])
            fig.text(x + w / 2, y + h / 2 - 6 / H, "No data", color=MUTED, fontsize=12, ha="center", va="center")
            continue
        if p["type"] == "stat":
            shown = series[:4]
            n = len(shown)
            for i, (name, ts, vs, _) in enumerate(shown):
                last = next((v for v in reversed(vs) if not math.isnan(v)), math.nan)
                cx = x + w * (i + 0.5) / n
                color = PALETTE[0]
                steps = p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
                for s in steps[1:]:
                    if not math.isnan(last) and last >= s["value"]:
                        color = "#f2495c"
                dec = p["fieldConfig"]["defaults"].get("decimals")
                text = (f"{last:.{dec}f}" if dec is not None and unit in ("short", "none") and not math.isnan(last)
                        else fmt_value(last, unit))
                fig.text(cx, y + h * 0.42, text, color=color, fontsize=22 if n == 1 else 16, weight="bold",
                         ha="center", va="center")
                if n > 1 or name not in ("", p["title"]):
                    fig.text(cx, y + 12 / H, name[:28], color=MUTED, fontsize=8, ha="center", va="center")
                ax = fig.add_axes((x + w * i / n + 4 / W, y + 4 / H, w / n - 8 / W, h * 0.3), facecolor="none")
                ax.fill_between([dt.datetime.fromtimestamp(t) for t in ts], vs, color=color, alpha=0.15, lw=0)
                ax.set_axis_off()
            continue
        ax = fig.add_axes(inner, facecolor=PANEL)
        for side in ax.spines.values():
            side.set_color(EDGE)
        ax.tick_params(colors=MUTED, labelsize=8)
        ax.grid(True, color=GRID, lw=0.6)
        ax.set_xlim(dt.datetime.fromtimestamp(start), dt.datetime.fromtimestamp(end))
        span_min, ticks = (end - start) / 60, 6 if g["w"] >= 12 else 4
        every = next((m for m in (1, 2, 5, 10, 15, 30, 60, 120, 240) if span_min / m <= ticks), 480)
        ax.xaxis.set_major_locator(mdates.MinuteLocator(byminute=range(0, 60, every)) if every < 60
                                   else mdates.HourLocator(interval=every // 60))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        if p["type"] == "heatmap":
            by_le: dict[float, list[float]] = {}
            ts = series[0][1]
            for name, tss, vs, metric in series:
                le = float(metric.get("le", "inf").replace("+Inf", "inf"))
                col = dict(zip(tss, vs))
                by_le[le] = [col.get(t, math.nan) for t in ts]
            les = sorted(by_le)
            import numpy as np

            cum = np.array([by_le[le] for le in les], dtype=float)
            counts = np.diff(np.vstack([np.zeros(len(ts)), np.nan_to_num(cum)]), axis=0).clip(min=0)
            times = mdates.date2num([dt.datetime.fromtimestamp(t) for t in ts])
            from matplotlib.colors import LinearSegmentedColormap

            cmap = LinearSegmentedColormap.from_list("grafana-oranges", ["#5c2e0a", "#ff9830", "#fade2a"])
            cmap.set_bad(PANEL)
            ax.imshow(np.ma.masked_less_equal(counts, 0), aspect="auto", origin="lower", cmap=cmap,
                      interpolation="nearest", extent=(times[0], times[-1], -0.5, len(les) - 0.5),
                      vmin=0, vmax=max(1.0, float(counts.max())))
            ax.set_yticks(range(len(les)))
            ax.set_yticklabels(["≤" + (f"{le:g}" if le != math.inf else "+Inf") for le in les], fontsize=7)
            ax.grid(False)
            continue
        stacked = p["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
        bars = p["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
        base = None
        times_all = sorted({t for s in series for t in s[1]})
        for i, (name, ts, vs, _) in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            when_ = [dt.datetime.fromtimestamp(t) for t in ts]
            if stacked:
                col = dict(zip(ts, vs))
                ys = [0 if math.isnan(col.get(t, math.nan)) else col[t] for t in times_all]
                lo = base or [0.0] * len(times_all)
                hi = [a + b for a, b in zip(lo, ys)]
                when_ = [dt.datetime.fromtimestamp(t) for t in times_all]
                ax.fill_between(when_, lo, hi, color=color, alpha=0.35, lw=0)
                ax.plot(when_, hi, color=color, lw=1.2, label=name)
                base = hi
            elif bars:
                ax.bar(when_, vs, width=step / 86400 * 0.9, color=color, alpha=0.8, label=name)
            else:
                ax.plot(when_, vs, color=color, lw=1.4, label=name)
                ax.fill_between(when_, vs, color=color, alpha=0.06, lw=0)
        d = p["fieldConfig"]["defaults"]
        finite = [v for s_ in series for v in s_[2] if not math.isnan(v)]
        lo_, hi_ = ax.get_ylim()
        low = d.get("min", 0 if min(finite) >= 0 else lo_)
        high = d.get("max", hi_ if max(finite) > low else low + 1)
        if high <= low:
            high = low + 1
        ax.set_ylim(low, high + (0.02 * (high - low) if "max" in d else 0))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, u=unit: fmt_value(v, u)))
        ncol = max(1, g["w"] // 4)
        handles, labels = ax.get_legend_handles_labels()
        limit = ncol * 3
        if len(labels) > limit:
            handles, labels = handles[:limit - 1], labels[:limit - 1]
            labels[-1] += f"  (+{len(series) - limit + 1} more)"
        fig.legend(handles, [s[:40] for s in labels], loc="upper left",
                   bbox_to_anchor=(x + 6 / W, y + (pad_bottom - 20) / H),
                   ncol=ncol, fontsize=7.5, frameon=False, labelcolor=TEXT, handlelength=1.2, columnspacing=1.0,
                   borderaxespad=0, handletextpad=0.4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor=BG)
    plt.close(fig)
    return stats


def render(prom: str, start: float, end: float, only: set[str] | None, out: pathlib.Path) -> None:
    for f in sorted(DASHBOARDS.glob("*.json")):
        if only and f.stem not in only:
            continue
        stats = draw(json.loads(f.read_text()), prom, start, end, out / f"{f.stem}.png")
        log(f"{out / (f.stem + '.png')}: {stats['panels']} panels, no data in {len(stats['empty'])}"
            + (f": {', '.join(stats['empty'])}" if stats["empty"] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=7.0, help="GRPO minutes after the warm-start")
    ap.add_argument("--warm-steps", type=int, default=4, help="supervised warm-start steps")
    ap.add_argument("--only", default="", help="comma-separated dashboard names (default: all)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--work-dir", default="", help="keep the run (logs, TSDB) here instead of a temporary folder")
    ap.add_argument("--prometheus", default="", help="render from this Prometheus; no run")
    ap.add_argument("--since", default="1h", help="with --prometheus: how far back (e.g. 90m, 2h)")
    ap.add_argument("--start", type=float, default=0, help="with --prometheus: range start (unix seconds)")
    ap.add_argument("--end", type=float, default=0, help="with --prometheus: range end (unix seconds)")
    ap.add_argument("--prometheus-port", type=int, default=0)
    args = ap.parse_args()
    only = set(filter(None, args.only.split(","))) or None
    out = pathlib.Path(args.out)
    if args.prometheus:
        m = re.fullmatch(r"(\d+)([mh])", args.since)
        if not m:
            sys.exit("--since: a number of minutes or hours, e.g. 90m or 2h")
        end = args.end or time.time()
        start = args.start or end - int(m.group(1)) * (60 if m.group(2) == "m" else 3600)
        render(args.prometheus.rstrip("/"), start, end, only, out)
        return
    from asyncwebrl.common.localstack import free_port

    work = pathlib.Path(args.work_dir) if args.work_dir else pathlib.Path(tempfile.mkdtemp(prefix="asyncwebrl-render-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"run directory {work}")
    run = Run(work, args.prometheus_port or free_port())
    try:
        start = time.time()
        train(run, args.minutes, args.warm_steps)
        end = time.time()
        run.stop_jobs()
        render(run.prom_url, start, end, only, out)
    finally:
        run.close()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
