"""Writes the Grafana dashboards in charts/dashboards/*.json (the files Grafana and the Helm chart load).

Edit the panels here and run ``python charts/generate_dashboards.py``; tests/deploy/test_observability.py
fails when the JSON files and this script disagree, when an expression does not parse, or when a metric
or label a panel names is not exported by the services. Every expression follows the scrape contract of
charts/README.md: targets are labelled ``job="asyncwebrl-<service>"`` and every per-job series
carries ``job_id``.
"""

from __future__ import annotations

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
J = 'job_id=~"$job_id"'  # the per-job filter
RI = "$__rate_interval"
UP = 'job=~"asyncwebrl-.+"'


def q(expr: str, legend: str = "", fmt: str | None = None) -> dict:
    t = {"expr": expr, "legendFormat": legend}
    if fmt:
        t["format"] = fmt
    return t


def braces(sel: str) -> str:
    return f"{{{sel}}}" if sel else ""


def quantiles(metric: str, sel: str, by: str = "", qs=(0.5, 0.95), legend: str = "") -> list[dict]:
    """histogram_quantile lines of ``metric`` (a histogram's base name) per ``by`` labels."""
    group = f"le{', ' + by if by else ''}"
    return [q(f"histogram_quantile({x}, sum by ({group}) (rate({metric}_bucket{braces(sel)}[{RI}])))",
              f"p{int(x * 100)}{' ' + legend if legend else ''}") for x in qs]


def mean(metric: str, sel: str, by: str, legend: str) -> dict:
    """Mean of a histogram's observations over the rate window."""
    return q(f"sum by ({by}) (rate({metric}_sum{braces(sel)}[{RI}])) / "
             f"sum by ({by}) (rate({metric}_count{braces(sel)}[{RI}]))",
             legend)


def grpc_panels(board: "Board", service: str) -> None:
    sel = f'grpc_service="asyncwebrl.v1.{service}"'
    board.ts("RPCs per second by method", [q(f"sum by (grpc_method) (rate(grpc_server_handled_total{{{sel}}}[{RI}]))",
                                             "{{grpc_method}}")], "reqps", w=8,
             desc=f"{service} calls completed per second (grpc_server_handled_total).")
    board.ts("RPC errors per second by code",
             [q(f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{sel}, grpc_code!="OK"}}[{RI}]))',
                "{{grpc_method}} {{grpc_code}}")], "reqps", w=8,
             desc="Calls that ended with a status other than OK (RESOURCE_EXHAUSTED is backpressure, not a bug).")
    board.ts("RPC latency p95 by method",
             [q(f"histogram_quantile(0.95, sum by (le, grpc_method) "
                f"(rate(grpc_server_handling_seconds_bucket{{{sel}}}[{RI}])))", "{{grpc_method}}")], "s", w=8,
             desc="Server-side handling time; GetBatch includes its wait for groups.")


class Board:
    def __init__(self, name: str, title: str, description: str, per_job: bool) -> None:
        self.name, self.title, self.description, self.per_job = name, title, description, per_job
        self.panels: list[dict] = []
        self.x = self.y = self.row_h = 0

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _add(self, panel: dict, w: int, h: int) -> dict:
        panel = {"id": len(self.panels) + 1, "gridPos": self._place(w, h), **panel}
        self.panels.append(panel)
        return panel

    def row(self, title: str) -> None:
        self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self._add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0

    @staticmethod
    def _targets(targets: list[dict]) -> list[dict]:
        return [{"refId": chr(ord("A") + i), "datasource": DS, "range": True, "instant": False, **t}
                for i, t in enumerate(targets)]

    def ts(self, title: str, targets: list[dict], unit: str = "short", w: int = 12, h: int = 8, desc: str = "",
           stack: bool = False, min_: float | None = None, max_: float | None = None, bars: bool = False) -> None:
        defaults: dict = {
            "unit": unit, "color": {"mode": "palette-classic"},
            "custom": {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 25 if stack else 8,
                       "showPoints": "never", "spanNulls": True, "axisSoftMin": 0,
                       "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
        }
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        self._add({"type": "timeseries", "title": title, "description": desc, "datasource": DS,
                   "targets": self._targets(targets), "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                               "tooltip": {"mode": "multi", "sort": "desc"}}}, w, h)

    def stat(self, title: str, targets: list[dict], unit: str = "short", w: int = 4, h: int = 4, desc: str = "",
             decimals: int | None = None, red_above: float | None = None) -> None:
        steps = [{"color": "green", "value": None}]
        if red_above is not None:
            steps.append({"color": "red", "value": red_above})
        defaults: dict = {"unit": unit, "color": {"mode": "thresholds"},
                          "thresholds": {"mode": "absolute", "steps": steps}}
        if decimals is not None:
            defaults["decimals"] = decimals
        self._add({"type": "stat", "title": title, "description": desc, "datasource": DS,
                   "targets": self._targets(targets), "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                               "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                               "orientation": "auto", "textMode": "auto"}}, w, h)

    def heatmap(self, title: str, metric: str, sel: str, w: int = 12, h: int = 8, desc: str = "") -> None:
        """Counts per bucket of histogram ``metric`` over time (observations per rate window)."""
        expr = f"sum by (le) (increase({metric}_bucket{braces(sel)}[{RI}]))"
        self._add({"type": "heatmap", "title": title, "description": desc, "datasource": DS,
                   "targets": self._targets([q(expr, "{{le}}", "heatmap")]),
                   "fieldConfig": {"defaults": {}, "overrides": []},
                   "options": {"calculate": False, "cellGap": 1, "yAxis": {"axisPlacement": "left", "unit": "short"},
                               "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                               "rowsFrame": {"layout": "auto"}, "tooltip": {"show": True, "yHistogram": False},
                               "legend": {"show": True}}}, w, h)

    def json(self) -> dict:
        templating = [{"name": "DS_PROMETHEUS", "label": "Data source", "type": "datasource", "query": "prometheus",
                       "current": {"text": "Prometheus", "value": "prometheus"}, "hide": 0, "refresh": 1,
                       "regex": "", "options": []}]
        if self.per_job:
            templating.append({
                "name": "job_id", "label": "Job", "type": "query", "datasource": DS,
                "definition": "label_values({__name__=~\"asyncwebrl_trainer_version|asyncwebrl_buffer_trainer_version|"
                              "asyncwebrl_rollout_episodes_running\"}, job_id)",
                "query": {"query": "label_values({__name__=~\"asyncwebrl_trainer_version|"
                                   "asyncwebrl_buffer_trainer_version|asyncwebrl_rollout_episodes_running\"}, job_id)",
                          "refId": "job_id"},
                "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1, "hide": 0,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "regex": ""})
        return {
            "uid": f"asyncwebrl-{self.name}", "title": f"asyncwebrl / {self.title}", "description": self.description,
            "tags": ["asyncwebrl"], "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
            "timezone": "browser", "refresh": "30s", "time": {"from": "now-3h", "to": "now"}, "fiscalYearStartMonth": 0,
            "liveNow": False, "weekStart": "",
            "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                      "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                      "name": "Annotations & Alerts", "type": "dashboard"}]},
            "links": [{"title": "asyncwebrl", "type": "dashboards", "tags": ["asyncwebrl"], "asDropdown": True,
                       "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "templating": {"list": templating},
            "panels": self.panels,
        }


def overview() -> Board:
    b = Board("overview", "Overview", "Training progress of every job: throughput, success, policy version, "
              "staleness; and the health of the shared services.", per_job=True)
    b.row("Training progress")
    b.stat("Policy version", [q(f"max by (job_id) (asyncwebrl_trainer_version{{{J}}})", "{{job_id}}")],
           desc="Weight version the trainer last published.")
    b.stat("Trajectories / hour", [q(f"sum by (job_id) (asyncwebrl_trainer_trajectories_per_hour{{{J}}})",
                                     "{{job_id}}")], decimals=0, desc="Episodes trained per hour, last step.")
    b.stat("Env steps / s", [q(f"sum by (job_id) (asyncwebrl_trainer_env_steps_per_second{{{J}}})", "{{job_id}}")],
           decimals=2, desc="Environment steps trained per second, last step.")
    b.stat("Success (last batch)", [q(f"avg by (job_id) (asyncwebrl_trainer_success_rate{{{J}}})", "{{job_id}}")],
           "percentunit", desc="Mean over difficulties of the last batch's success rate.")
    b.stat("Stale groups rejected (1h)",
           [q(f'sum by (job_id) (increase(asyncwebrl_trainer_rejected_groups_total{{{J}, reason="stale"}}[1h]))',
              "{{job_id}}")], decimals=0, red_above=1,
           desc="Groups older than the staleness bound, refused at batch time.")
    b.stat("Targets down", [q(f"count(up{{{UP}}} == 0) or vector(0)", "down")], red_above=1,
           desc="Scrape targets of asyncwebrl services that do not answer.")
    b.ts("Trajectories per hour", [
        q(f"asyncwebrl_trainer_trajectories_per_hour{{{J}}}", "trained {{job_id}}"),
        q(f'3600 * sum by (job_id) (rate(asyncwebrl_rollout_episodes_total{{{J}, outcome=~"success|failure"}}[{RI}]))',
          "produced {{job_id}}")], desc="Trained: the trainer's figure for its last step. Produced: episodes "
                                        "the gateway finished (environment faults excluded).")
    b.ts("Environment steps per second", [
        q(f"sum(rate(asyncwebrl_envfleet_steps_total[{RI}]))", "envfleet (all jobs)"),
        q(f"asyncwebrl_trainer_env_steps_per_second{{{J}}}", "trained {{job_id}}")], "ops",
        desc="Steps run by the browsers, and steps trained on per second of the trainer's last step.")
    b.ts("Success rate by difficulty", [
        q(f"asyncwebrl_trainer_success_rate{{{J}}}", "{{job_id}} {{difficulty}}"),
        q(f'sum by (job_id) (rate(asyncwebrl_rollout_episodes_total{{{J}, outcome="success"}}[{RI}])) / '
          f'sum by (job_id) (rate(asyncwebrl_rollout_episodes_total{{{J}, outcome=~"success|failure"}}[{RI}]))',
          "{{job_id}} rollout (all)")], "percentunit", min_=0, max_=1,
        desc="The trainer's last batch per difficulty, and the gateway's finished episodes.")
    b.ts("Reward by difficulty", [q(f"asyncwebrl_trainer_reward{{{J}}}", "{{job_id}} {{difficulty}}")],
         desc="Mean episode reward of the last trained batch.")
    b.row("Policy version and staleness")
    b.ts("Policy version", [
        q(f"asyncwebrl_trainer_version{{{J}}}", "trainer {{job_id}}"),
        q(f"max by (job_id) (asyncwebrl_buffer_trainer_version{{{J}}})", "gate reads {{job_id}}"),
        q(f"max by (job_id) (asyncwebrl_weightsync_published_version{{{J}}})", "published {{job_id}}")], w=8,
        desc="Trainer: last written version; gate: the version the buffer's staleness gate uses (moves on Ack); "
             "published: weightsync's fan-out.")
    b.ts("Policy lag (versions)", [
        mean("asyncwebrl_trainer_staleness", J, "job_id", "mean at training {{job_id}}"),
        q(f"histogram_quantile(0.95, sum by (le, job_id) (rate(asyncwebrl_trainer_staleness_bucket{{{J}}}[{RI}])))",
          "p95 at training {{job_id}}"),
        mean("asyncwebrl_rollout_group_staleness", J, "job_id", "mean at write {{job_id}}")], w=8,
        desc="Trainer version minus the oldest token version of a group, when trained and when written.")
    b.ts("Staleness gate", [
        q(f"max by (job_id) (asyncwebrl_buffer_gate_capacity{{{J}}})", "capacity {{job_id}}"),
        q(f'max by (job_id) (asyncwebrl_buffer_groups{{{J}, kind="running"}})', "running {{job_id}}"),
        q(f"max by (job_id) (asyncwebrl_buffer_stream_length{{{J}}})", "stored {{job_id}}")], w=8,
        desc="(eta + v + 1) * B - (accepted + running): a new group starts only while it is above 0.")
    b.heatmap("Staleness of trained groups", "asyncwebrl_trainer_staleness", J,
              desc="Groups per staleness bucket (versions) per rate window.")
    b.ts("Rejected groups per minute by reason", [
        q(f"60 * sum by (job_id, reason) (rate(asyncwebrl_trainer_rejected_groups_total{{{J}}}[{RI}]))",
          "{{job_id}} {{reason}}")], desc="stale: beyond the bound; zero_variance: no GRPO signal (dropped).")
    b.row("Services")
    b.ts("Targets up", [q(f"sum by (job) (up{{{UP}}})", "{{job}}")], w=8, min_=0,
         desc="Scrape targets answering, per service.")
    b.ts("Resident memory", [q(f"sum by (job) (process_resident_memory_bytes{{{UP}}})", "{{job}}")], "bytes", w=8)
    b.ts("CPU", [q(f"sum by (job) (rate(process_cpu_seconds_total{{{UP}}}[{RI}]))", "{{job}}")], "percentunit",
         w=8, desc="CPU seconds per second (1 = one core).")
    b.ts("Job processes restarted (api)", [
        q(f"sum by (role) (increase(asyncwebrl_api_child_restarts_total[{RI}]))", "{{role}}")], bars=True,
        desc="Crashed trainer, gateway or engine processes the local launcher started again.")
    b.ts("Jobs (api)", [
        q(f"sum(increase(asyncwebrl_api_jobs_created_total[{RI}]))", "created"),
        q(f"sum by (state) (increase(asyncwebrl_api_jobs_finished_total[{RI}]))", "{{state}}"),
        q(f"sum by (reason) (increase(asyncwebrl_api_requests_rejected_total[{RI}]))", "rejected {{reason}}")],
        bars=True, desc="Jobs created and finished, REST requests refused.")
    return b


def envfleet() -> Board:
    b = Board("envfleet", "envfleet", "Browsers, sessions, steps and screenshots of the environment fleet.",
              per_job=False)
    b.row("Capacity")
    b.stat("Sessions leased", [q("sum(asyncwebrl_envfleet_sessions)", "sessions")])
    b.stat("Free slots", [q('sum(asyncwebrl_envfleet_slots{state="free"})', "free")])
    b.stat("Browsers", [q("sum(asyncwebrl_envfleet_browsers)", "browsers")])
    b.stat("Steps / s", [q(f"sum(rate(asyncwebrl_envfleet_steps_total[{RI}]))", "steps/s")], decimals=2)
    b.stat("Step latency p95", quantiles("asyncwebrl_envfleet_step_seconds", "", qs=(0.95,)), "s")
    b.stat("Browser restarts (1h)", [q("sum(increase(asyncwebrl_envfleet_browser_restarts_total[1h]))", "restarts")],
           decimals=0, red_above=1)
    b.ts("Session slots", [q("sum by (state) (asyncwebrl_envfleet_slots)", "{{state}}")], stack=True, w=8,
         desc="Busy: a leased browser context; free: room for another.")
    b.ts("Browsers per replica", [q("asyncwebrl_envfleet_browsers", "{{instance}}")], w=8)
    b.ts("Allocations per second by result", [
        q(f"sum by (result) (rate(asyncwebrl_envfleet_allocations_total[{RI}]))", "{{result}}")], "ops", w=8,
        desc="exhausted: every context leased (the gateway waits and retries); fault: the page failed to load.")
    b.row("Steps")
    b.ts("Steps per second by action", [
        q(f"sum by (action) (rate(asyncwebrl_envfleet_steps_total[{RI}]))", "{{action}}")], "ops", stack=True, w=8)
    b.ts("Step latency", quantiles("asyncwebrl_envfleet_step_seconds", "", qs=(0.5, 0.95, 0.99)), "s", w=8,
         desc="From a Step request to its observation (action, settle, screenshot, blob write).")
    b.ts("Allocate latency", quantiles("asyncwebrl_envfleet_allocate_seconds", "", qs=(0.5, 0.95)), "s", w=8,
         desc="Open a context (or reset a parked one) and load the task.")
    b.row("Screenshots")
    b.ts("Screenshot bytes per second", [
        q(f"sum(rate(asyncwebrl_envfleet_screenshot_bytes_total[{RI}]))", "written")], "Bps", w=8)
    b.ts("Screenshots per second by format", [
        q(f"sum by (format) (rate(asyncwebrl_envfleet_screenshots_total[{RI}]))", "{{format}}")], "ops", w=8)
    b.ts("Blob budget backpressure", [
        q(f"sum by (result) (rate(asyncwebrl_envfleet_blob_backpressure_total[{RI}]))", "{{result}}")], "ops", w=8,
        desc="Screenshot writes that met the buffer's byte budget: waited, then refused.")
    b.row("Faults and host policy")
    b.ts("Environment faults by kind", [
        q(f"sum by (kind) (rate(asyncwebrl_envfleet_env_faults_total[{RI}]))", "{{kind}}"),
        q(f"sum by (kind) (rate(asyncwebrl_envfleet_site_unreachable_total[{RI}]))", "site unreachable: {{kind}}")],
        "ops", w=8,
        desc="Episodes voided by a browser or page crash or a failed step; live-website tasks whose start page "
             "could not be loaded (UNAVAILABLE at Allocate, no episode).")
    b.ts("Blocked requests by reason", [
        q(f"sum by (reason) (rate(asyncwebrl_envfleet_blocked_requests_total[{RI}]))", "{{reason}}")], "ops", w=8,
        desc="Requests, navigations and windows the per-task host allowlist refused.")
    b.ts("Leases and resets", [
        q(f"sum(rate(asyncwebrl_envfleet_expired_leases_total[{RI}]))", "expired leases"),
        q(f"sum(rate(asyncwebrl_envfleet_warm_resets_total[{RI}]))", "warm resets"),
        q(f"sum(rate(asyncwebrl_envfleet_browser_restarts_total[{RI}]))", "browser restarts")], "ops", w=8)
    b.row("gRPC (EnvService)")
    grpc_panels(b, "EnvService")
    return b


def rollout() -> Board:
    b = Board("rollout", "Rollout and inference", "The everlasting episode pool of each job's gateway, and the "
              "inference engines it calls.", per_job=True)
    b.row("Episode pool")
    b.stat("Episodes running", [q(f"sum by (job_id) (asyncwebrl_rollout_episodes_running{{{J}}})", "{{job_id}}")])
    b.stat("Groups running", [q(f"sum by (job_id) (asyncwebrl_rollout_groups_running{{{J}}})", "{{job_id}}")])
    b.stat("Gate capacity", [q(f"min by (job_id) (asyncwebrl_rollout_gate_capacity{{{J}}})", "{{job_id}}")])
    b.stat("Episodes / min", [q(f"60 * sum by (job_id) (rate(asyncwebrl_rollout_episodes_total{{{J}}}[{RI}]))",
                                "{{job_id}}")], decimals=1)
    b.stat("Generated tokens / s", [
        q(f"sum(rate(asyncwebrl_engine_generated_tokens_total{{{J}}}[{RI}]))", "embedded"),
        q(f"sum(rate(sglang:generation_tokens_total{{{J}}}[{RI}]))", "SGLang")], decimals=1,
        desc="Output tokens per second of the selected jobs' engines: embedded engines and SGLang servers.")
    b.stat("Generate latency p95", quantiles("asyncwebrl_rollout_generate_seconds", J, qs=(0.95,)), "s")
    b.ts("Episodes and groups running", [
        q(f"asyncwebrl_rollout_episodes_running{{{J}}}", "episodes {{job_id}}"),
        q(f"asyncwebrl_rollout_groups_running{{{J}}}", "groups {{job_id}}")], w=8,
        desc="Pool slots held by episodes, and groups started and not yet written or dropped.")
    b.ts("Episodes finished per minute by outcome", [
        q(f"60 * sum by (job_id, outcome) (rate(asyncwebrl_rollout_episodes_total{{{J}}}[{RI}]))",
          "{{job_id}} {{outcome}}")], stack=True, w=8, desc="success, failure, or env_error (voided).")
    b.ts("Steps per episode (mean)", [
        mean("asyncwebrl_rollout_steps_per_episode", J, "job_id, outcome", "{{job_id}} {{outcome}}")], w=8)
    b.ts("Groups written and dropped per minute", [
        q(f"60 * sum by (job_id) (rate(asyncwebrl_rollout_groups_written_total{{{J}}}[{RI}]))", "written {{job_id}}"),
        q(f"60 * sum by (job_id, reason) (rate(asyncwebrl_rollout_groups_dropped_total{{{J}}}[{RI}]))",
          "dropped {{job_id}} {{reason}}")], w=8)
    b.ts("Waits per minute", [
        q(f"60 * sum by (job_id) (rate(asyncwebrl_rollout_gate_waits_total{{{J}}}[{RI}]))", "gate {{job_id}}"),
        q(f"60 * sum by (job_id) (rate(asyncwebrl_rollout_barrier_waits_total{{{J}}}[{RI}]))", "barrier {{job_id}}"),
        q(f"60 * sum by (job_id) (rate(asyncwebrl_rollout_allocate_waits_total{{{J}}}[{RI}]))",
          "envfleet full {{job_id}}")], w=8,
        desc="Gate: the staleness bound held a group back; barrier: sync mode waited for the endpoints; "
             "envfleet full: Allocate refused, retried.")
    b.ts("Judged episodes by verdict", [
        q(f"60 * sum by (job_id, verdict) (rate(asyncwebrl_rollout_judged_total{{{J}}}[{RI}]))",
          "{{job_id}} {{verdict}}")], w=8, desc="Rubric tasks only, per minute.")
    b.row("Judge (rubric tasks)")
    b.ts("Judge calls per minute by result", [
        q(f"60 * sum by (job_id, result) (rate(asyncwebrl_rollout_judge_calls_total{{{J}}}[{RI}]))",
          "{{job_id}} {{result}}"),
        q(f"60 * sum by (job_id) (rate(asyncwebrl_rollout_judge_retries_total{{{J}}}[{RI}]))", "retries {{job_id}}")],
         w=8, desc="ok, unparseable, or an outage: timeout, refused, http_5xx, http_429 (retried with backoff), "
                   "http_error, bad_reply.")
    b.ts("Judge latency", quantiles("asyncwebrl_rollout_judge_seconds", J), "s", w=8,
         desc="One HTTP call to the judge (the episode's judge_latency_s adds retries and backoff).")
    b.ts("Judge calls in flight, episodes lost", [
        q(f"sum by (job_id) (asyncwebrl_rollout_judge_in_flight{{{J}}})", "in flight {{job_id}}"),
        q(f"60 * sum by (job_id, reason) (rate(asyncwebrl_rollout_episodes_lost_total{{{J}}}[{RI}]))",
          "lost/min {{job_id}} {{reason}}")], w=8,
        desc="Calls under way (bounded by --judge-concurrency); episodes voided and left out of their group, by "
             "reason (judge_unparseable, judge_unavailable, env_error, ...).")
    b.row("Generation (the gateway's view)")
    b.ts("Generate latency", quantiles("asyncwebrl_rollout_generate_seconds", J), "s", w=8,
         desc="One step's call to an inference endpoint, resumes after a weight update included.")
    b.ts("Output tokens per step", quantiles("asyncwebrl_rollout_tokens_per_step", J), w=8)
    b.ts("Token versions in a written group", [
        mean("asyncwebrl_rollout_group_version_span", J, "job_id", "span (newest - oldest) {{job_id}}"),
        mean("asyncwebrl_rollout_group_staleness", J, "job_id", "staleness at write {{job_id}}")], w=8,
        desc="Versions a group's tokens span (interruptible generation), and how far behind the trainer it was.")
    b.row("Engines")
    b.ts("Requests running and queued", [
        q(f"asyncwebrl_engine_running_requests{{{J}}}", "running {{instance}}"),
        q(f"asyncwebrl_engine_queued_requests{{{J}}}", "queued {{instance}}"),
        q(f"asyncwebrl_engine_paused{{{J}}}", "paused {{instance}}")], w=8)
    b.ts("Tokens per second", [
        q(f"sum by (instance) (rate(asyncwebrl_engine_generated_tokens_total{{{J}}}[{RI}]))", "generated {{instance}}"),
        q(f"sum by (instance) (rate(asyncwebrl_engine_prompt_tokens_total{{{J}}}[{RI}]))", "prefilled {{instance}}")],
        w=8)
    b.ts("Time to first token", quantiles("asyncwebrl_engine_time_to_first_token_seconds", J), "s", w=8,
         desc="Queue and prefill time of a request.")
    b.ts("End-to-end request latency", quantiles("asyncwebrl_engine_e2e_request_latency_seconds", J), "s", w=8)
    b.ts("Batch size (mean)", [
        mean("asyncwebrl_engine_decode_batch_size", J, "instance", "decode {{instance}}"),
        mean("asyncwebrl_engine_prefill_batch_size", J, "instance", "prefill {{instance}}")], w=8,
        desc="Requests per decode step and per prefill (continuous batching).")
    b.ts("Requests finished per second by reason", [
        q(f"sum by (reason) (rate(asyncwebrl_engine_requests_finished_total{{{J}}}[{RI}]))", "{{reason}}"),
        q(f"sum by (endpoint) (rate(asyncwebrl_engine_requests_rejected_total{{{J}}}[{RI}]))",
          "rejected {{endpoint}}")],
        "reqps", w=8)
    b.ts("Image cache hit ratio", [
        q(f'sum by (instance) (rate(asyncwebrl_engine_image_cache_total{{{J}, result="hit"}}[{RI}])) / '
          f'sum by (instance) (rate(asyncwebrl_engine_image_cache_total{{{J}}}[{RI}]))', "{{instance}}")],
        "percentunit", w=8, min_=0, max_=1, desc="Processed-image cache: the same screenshot in several prompts.")
    b.ts("Pause and weight updates per minute", [
        q(f"60 * sum by (instance) (rate(asyncwebrl_engine_pauses_total{{{J}}}[{RI}]))", "pauses {{instance}}"),
        q(f"60 * sum by (instance) (rate(asyncwebrl_engine_weight_updates_total{{{J}}}[{RI}]))",
          "weight updates {{instance}}")], w=8)
    b.ts("Engines by served version", [
        q(f"count by (job_id, version) (asyncwebrl_engine_weight_version_info{{{J}}} == 1)",
          "{{job_id}} v{{version}}")],
        w=8, stack=True, desc="The weight version each engine reports serving.")
    sglang_panels(b)
    return b


def sglang_panels(b: Board) -> None:
    """SGLang's own metrics (--enable-metrics), for jobs whose engines are SGLang servers (job="asyncwebrl-sglang").
    Names and labels as SGLang 0.5.20 and 0.5.23 define them (srt/observability/metrics_collector.py): the
    scheduler's gauges carry model_name, engine_type, tp_rank, pp_rank, moe_ep_rank (one series per
    scheduler that reports: attention-TP rank 0, or each DP-attention rank), the tokenizer's counters and
    histograms model_name, engine_type, is_streaming; the scrape adds job, instance and job_id. Summed per
    server (instance) over its schedulers; token usage is the fullest scheduler's."""
    b.row("SGLang engines")
    b.ts("SGLang requests running and queued", [
        q(f"sum by (job_id, instance) (sglang:num_running_reqs{{{J}}})", "running {{instance}}"),
        q(f"sum by (job_id, instance) (sglang:num_queue_reqs{{{J}}})", "queued {{instance}}")], w=8,
        desc="Requests in the running batch and in the waiting queue of each SGLang server "
             "(sglang:num_running_reqs, sglang:num_queue_reqs).")
    b.ts("SGLang KV cache token usage", [
        q(f"max by (job_id, instance) (sglang:token_usage{{{J}}})", "{{instance}}")], "percentunit", w=8,
        min_=0, max_=1, desc="Share of the KV cache's token slots in use (sglang:token_usage); near 1 new "
                             "requests queue and running ones may be retracted.")
    b.ts("SGLang generation throughput", [
        q(f"sum by (job_id, instance) (rate(sglang:generation_tokens_total{{{J}}}[{RI}]))", "generated {{instance}}"),
        q(f"sum by (job_id, instance) (rate(sglang:prompt_tokens_total{{{J}}}[{RI}]))", "prefilled {{instance}}"),
        q(f"sum by (job_id, instance) (sglang:gen_throughput{{{J}}})", "decode (scheduler) {{instance}}")], w=8,
        desc="Tokens per second: output and prompt tokens of finished requests (rate of "
             "sglang:generation_tokens_total, sglang:prompt_tokens_total), and the decode throughput the "
             "scheduler last logged (sglang:gen_throughput).")
    b.ts("SGLang time to first token", quantiles("sglang:time_to_first_token_seconds", J), "s", w=12,
         desc="Queue and prefill time of a request (sglang:time_to_first_token_seconds).")
    b.ts("SGLang end-to-end request latency", quantiles("sglang:e2e_request_latency_seconds", J), "s", w=12,
         desc="From arrival to the last token (sglang:e2e_request_latency_seconds).")


def buffer() -> Board:
    b = Board("buffer", "Buffer and Redis", "Groups stored, streamed and acked; screenshot blobs against the "
              "budget; the buffer's gRPC and the Redis behind it.", per_job=True)
    b.row("Groups")
    b.stat("Groups stored", [q(f"sum(asyncwebrl_buffer_stream_length{{{J}}})", "stored")],
           desc="Unread or unacked groups of the selected jobs.")
    b.stat("Pending (delivered, not acked)", [q(f"sum(asyncwebrl_buffer_stream_pending{{{J}}})", "pending")])
    b.stat("Dead letters", [q(f"sum(asyncwebrl_buffer_dead_letters{{{J}}})", "dead letters")], red_above=1)
    b.stat("Blob budget used", [q("max(asyncwebrl_buffer_blob_bytes_all_jobs) / max(asyncwebrl_buffer_blob_budget_bytes"
                                  " > 0)", "used")], "percentunit", red_above=0.9,
           desc="Screenshot bytes of all jobs over the byte budget (no value: no budget set).")
    b.stat("Blob bytes (all jobs)", [q("max(asyncwebrl_buffer_blob_bytes_all_jobs)", "bytes")], "bytes")
    b.stat("Redis memory", [q("max(redis_memory_used_bytes)", "used")], "bytes",
           desc="From redis_exporter, when one is deployed.")
    b.ts("PutGroup per second by result", [
        q(f"sum by (result) (rate(asyncwebrl_buffer_groups_put_total[{RI}]))", "{{result}}")], "ops", w=8,
        desc="stored, duplicate (an idempotent retry), invalid, full.")
    b.ts("Groups delivered and acked per second", [
        q(f"sum(rate(asyncwebrl_buffer_groups_delivered_total[{RI}]))", "delivered"),
        q(f"sum(rate(asyncwebrl_buffer_groups_acked_total[{RI}]))", "acked"),
        q(f"sum by (reason) (rate(asyncwebrl_buffer_groups_rejected_total[{RI}]))", "rejected {{reason}}")], "ops",
        w=8)
    b.ts("Stored and pending groups per job", [
        q(f"max by (job_id) (asyncwebrl_buffer_stream_length{{{J}}})", "stored {{job_id}}"),
        q(f"max by (job_id) (asyncwebrl_buffer_stream_pending{{{J}}})", "pending {{job_id}}")], w=8)
    b.ts("Oldest stored group", [q(f"max by (job_id) (asyncwebrl_buffer_oldest_entry_age_seconds{{{J}}})",
                                   "{{job_id}}")], "s", w=8)
    b.ts("Group counts per job by kind", [
        q(f"max by (job_id, kind) (asyncwebrl_buffer_groups{{{J}}})", "{{job_id}} {{kind}}")], w=8,
        desc="The per-job counters in Redis the staleness gate reads (accepted, consumed, rejected_*, ...).")
    b.ts("Trajectory bytes", [
        q(f"sum(rate(asyncwebrl_buffer_group_bytes_total[{RI}]))", "written / s"),
        q(f"max by (job_id) (asyncwebrl_buffer_stream_bytes{{{J}}})", "stored {{job_id}}")], "bytes", w=8)
    b.row("Screenshot blobs")
    b.ts("Blob bytes and budget", [
        q("max(asyncwebrl_buffer_blob_bytes_all_jobs)", "all jobs"),
        q("max(asyncwebrl_buffer_blob_budget_bytes > 0)", "budget"),
        q(f"max by (job_id) (asyncwebrl_buffer_blob_bytes{{{J}}})", "{{job_id}}")], "bytes", w=8,
        desc="Past the budget new blobs are refused (envfleet waits, then refuses the step).")
    b.ts("Blobs stored per job", [q(f"max by (job_id) (asyncwebrl_buffer_blobs{{{J}}})", "{{job_id}}")], w=8)
    b.ts("Blob puts and sweeps per second", [
        q(f"sum by (result) (rate(asyncwebrl_buffer_blob_puts_total[{RI}]))", "put {{result}}"),
        q(f"sum(rate(asyncwebrl_buffer_blobs_swept_total[{RI}]))", "swept")], "ops", w=8)
    b.row("gRPC (BufferService)")
    grpc_panels(b, "BufferService")
    b.row("Redis (redis_exporter)")
    b.ts("Redis memory", [q("max by (instance) (redis_memory_used_bytes)", "used {{instance}}"),
                          q("max by (instance) (redis_memory_max_bytes > 0)", "maxmemory {{instance}}")], "bytes", w=8,
         desc="noeviction: past maxmemory writes fail loudly instead of dropping trajectories.")
    b.ts("Redis commands per second", [
        q(f"sum by (instance) (rate(redis_commands_processed_total[{RI}]))", "{{instance}}")], "ops", w=8)
    b.ts("Redis clients and keys", [
        q("max by (instance) (redis_connected_clients)", "clients {{instance}}"),
        q("sum by (instance) (redis_db_keys)", "keys {{instance}}")], w=8)
    return b


def trainer() -> Board:
    b = Board("trainer", "Trainer", "Multi-step GRPO per job: loss, clipping, gradient norm, throughput and where "
              "the time of a step goes.", per_job=True)
    b.row("Progress")
    b.stat("Version", [q(f"max by (job_id) (asyncwebrl_trainer_version{{{J}}})", "{{job_id}}")])
    b.stat("Steps / hour", [q(f"3600 * sum by (job_id) (rate(asyncwebrl_trainer_steps_total{{{J}}}[{RI}]))",
                              "{{job_id}}")], decimals=0)
    b.stat("Loss", [q(f"asyncwebrl_trainer_loss{{{J}}}", "{{job_id}}")], decimals=4)
    b.stat("Grad norm", [q(f"asyncwebrl_trainer_grad_norm{{{J}}}", "{{job_id}}")], decimals=3)
    b.stat("Train tokens / s", [q(f"asyncwebrl_trainer_train_tokens_per_second{{{J}}}", "{{job_id}}")], decimals=0)
    b.stat("Publish failures (1h)", [q(f"sum(increase(asyncwebrl_trainer_publish_failures_total{{{J}}}[1h]))",
                                       "failures")], decimals=0, red_above=1)
    b.row("Optimisation")
    b.ts("Loss", [q(f"asyncwebrl_trainer_loss{{{J}}}", "{{job_id}}")], w=8,
         desc="Decoupled PPO loss, mean over every response token of the batch.")
    b.ts("Gradient norm", [q(f"asyncwebrl_trainer_grad_norm{{{J}}}", "{{job_id}}")], w=8, desc="Before clipping.")
    b.ts("Clip and behaviour-cap fractions", [
        q(f"asyncwebrl_trainer_clip_fraction{{{J}}}", "clipped {{job_id}}"),
        q(f"asyncwebrl_trainer_behaviour_cap_fraction{{{J}}}", "behaviour cap {{job_id}}")], "percentunit", w=8,
        desc="Kept tokens where PPO took its clipped branch (no gradient); tokens masked because "
             "exp(logp_prox - logp_behav) > cap.")
    b.ts("KL of a step", [
        q(f"asyncwebrl_trainer_approx_kl{{{J}}}", "proximal to updated, 2nd minibatch on {{job_id}}"),
        q(f"asyncwebrl_trainer_step_kl{{{J}}}", "before to after, whole batch {{job_id}}"),
        q(f"60 * sum by (job_id) (rate(asyncwebrl_trainer_step_backtracks_total{{{J}}}[{RI}]))",
          "backtracks/min {{job_id}}"),
        q(f"60 * sum by (job_id) (rate(asyncwebrl_trainer_steps_skipped_total{{{J}}}[{RI}]))",
          "skipped/min {{job_id}}")], w=8,
        desc="A jump of the KL (0.001 to 0.1) is how a collapse begins; with max_step_kl such a step is undone "
             "and retried at half the learning rate (a backtrack), or skipped.")
    b.ts("Learning rate", [q(f"asyncwebrl_trainer_lr{{{J}}}", "{{job_id}}")], w=8)
    b.ts("Micro-batches per step", [q(f"asyncwebrl_trainer_micro_batches{{{J}}}", "{{job_id}}")], w=8)
    b.row("Throughput")
    b.ts("Train tokens per second", [q(f"asyncwebrl_trainer_train_tokens_per_second{{{J}}}", "{{job_id}}")], w=8,
         desc="Prompt + output tokens through forward and backward per second of compute, last step.")
    b.ts("Trajectories per hour and env steps per second", [
        q(f"asyncwebrl_trainer_trajectories_per_hour{{{J}}}", "trajectories/h {{job_id}}"),
        q(f"3600 * asyncwebrl_trainer_env_steps_per_second{{{J}}}", "env steps/h {{job_id}}")], w=8)
    b.ts("Steps and groups per minute", [
        q(f"60 * sum by (job_id) (rate(asyncwebrl_trainer_steps_total{{{J}}}[{RI}]))", "steps {{job_id}}"),
        q(f"60 * sum by (job_id) (rate(asyncwebrl_trainer_groups_total{{{J}}}[{RI}]))", "groups {{job_id}}")], w=8)
    b.row("Data")
    b.ts("Success rate by difficulty", [q(f"asyncwebrl_trainer_success_rate{{{J}}}", "{{job_id}} {{difficulty}}")],
         "percentunit", w=8, min_=0, max_=1)
    b.ts("Reward by difficulty", [q(f"asyncwebrl_trainer_reward{{{J}}}", "{{job_id}} {{difficulty}}")], w=8)
    b.ts("Episode length (mean steps)", [
        mean("asyncwebrl_trainer_episode_length", J, "job_id, outcome", "{{job_id}} {{outcome}}")], w=8,
        desc="Steps of trained episodes: successes and failures.")
    b.ts("Output tokens per trained step", quantiles("asyncwebrl_trainer_tokens_per_step", J), w=8)
    b.heatmap("Staleness of trained groups", "asyncwebrl_trainer_staleness", J, w=8)
    b.ts("Rejected groups per minute by reason", [
        q(f"60 * sum by (job_id, reason) (rate(asyncwebrl_trainer_rejected_groups_total{{{J}}}[{RI}]))",
          "{{job_id}} {{reason}}")], w=8)
    b.row("Time split")
    b.ts("Share of the step time by phase", [
        q(f"sum by (job_id, phase) (rate(asyncwebrl_trainer_phase_seconds_total{{{J}}}[{RI}])) / on (job_id) "
          f"group_left () sum by (job_id) (rate(asyncwebrl_trainer_phase_seconds_total{{{J}}}[{RI}]))",
          "{{job_id}} {{phase}}")], "percentunit", stack=True, w=12, min_=0, max_=1,
        desc="Where a training step's time goes: waiting for data, the proximal pass, forward/backward, "
             "optimizer, checkpoint, publish.")
    b.ts("Seconds per step by phase", [
        q(f"sum by (job_id, phase) (rate(asyncwebrl_trainer_phase_seconds_total{{{J}}}[{RI}])) / on (job_id) "
          f"group_left () sum by (job_id) (rate(asyncwebrl_trainer_steps_total{{{J}}}[{RI}]))",
          "{{job_id}} {{phase}}")], "s", stack=True, w=12)
    # Appended, so the panels above keep their ids.
    b.row("Off-policy health (warns of a collapse before success falls)")
    b.ts("Behaviour weights: effective sample size", [q(f"asyncwebrl_trainer_behaviour_ess{{{J}}}", "{{job_id}}")],
         "percentunit", w=8, min_=0, max_=1,
         desc="(sum w)^2 / (n sum w^2) of w = exp(logp_prox - logp_behav) over response tokens: 1 on-policy; "
              "low when rollouts come from a policy far from the one being trained.")
    b.ts("Clipped and dual-clipped tokens", [
        q(f"asyncwebrl_trainer_clip_fraction{{{J}}}", "clipped branch {{job_id}}"),
        q(f"asyncwebrl_trainer_dual_clip_fraction{{{J}}}", "dual clip {{job_id}}")], "percentunit", w=8,
        desc="Kept tokens with no gradient because the update left the trust region.")
    b.ts("Rollout vs proximal logprob gap (same version)", [
        q(f"asyncwebrl_trainer_behaviour_logprob_gap{{{J}}}", "{{job_id}}")], w=8,
        desc="Mean |logp_prox - logp_behav| over tokens of the trainer's own version: the engine and the trainer "
             "should agree; a gap means other weights or numerics.")
    b.ts("Advantage mass by sign", [
        q(f"asyncwebrl_trainer_advantage_mass{{{J}}}", "{{job_id}} {{sign}}")], w=8,
        desc="Sum of token advantages, positive and |negative|: a push dominated by one sign moves the policy "
             "the most.")
    b.ts("Policy entropy", [q(f"asyncwebrl_trainer_entropy{{{J}}}", "{{job_id}}")], w=8,
         desc="Mean entropy (nats) of the policy at response positions.")
    b.ts("Invalid actions", [q(f"asyncwebrl_trainer_invalid_action_rate{{{J}}}", "{{job_id}}")], "percentunit",
         w=8, min_=0, max_=1, desc="Steps of the last batch whose output did not parse as an action.")
    return b


def weightsync() -> Board:
    b = Board("weightsync", "Weight sync", "Versions published to the inference endpoints: fan-out, loads, "
              "failures, and the endpoints held back.", per_job=True)
    b.row("Versions")
    b.stat("Published version", [q(f"max by (job_id) (asyncwebrl_weightsync_published_version{{{J}}})",
                                   "{{job_id}}")])
    b.stat("Held endpoints", [q(f"sum(asyncwebrl_weightsync_held_endpoints{{{J}}})", "held")], red_above=1)
    b.stat("Load failures (1h)", [q(f"sum(increase(asyncwebrl_weightsync_load_failures_total{{{J}}}[1h]))",
                                    "failures")], decimals=0, red_above=1)
    b.stat("Publish p95", quantiles("asyncwebrl_weightsync_publish_seconds", J, qs=(0.95,)), "s")
    b.stat("Bytes loaded / s", [q(f"sum(rate(asyncwebrl_weightsync_bytes_loaded_total{{{J}}}[{RI}]))", "B/s")],
           "Bps")
    b.stat("Fresh endpoints", [q(f"sum(asyncwebrl_weightsync_endpoints{{{J}}})", "endpoints")])
    b.ts("Published and trained version", [
        q(f"max by (job_id) (asyncwebrl_weightsync_published_version{{{J}}})", "published {{job_id}}"),
        q(f"asyncwebrl_trainer_version{{{J}}}", "trainer {{job_id}}")], w=8)
    b.ts("Fresh endpoints by served version", [
        q(f"max by (job_id, version) (asyncwebrl_weightsync_endpoints{{{J}}})", "{{job_id}} v{{version}}")],
        stack=True, w=8, desc="An endpoint that serves an older version than the published one gets no work.")
    b.ts("Held endpoints", [q(f"max by (job_id) (asyncwebrl_weightsync_held_endpoints{{{J}}})", "{{job_id}}")],
         w=8, desc="Behind the published version or failed after retries; the reconciler catches them up.")
    b.row("Publishes and loads")
    b.ts("Publishes per minute by outcome", [
        q(f"60 * sum by (job_id, outcome) (rate(asyncwebrl_weightsync_publishes_total{{{J}}}[{RI}]))",
          "{{job_id}} {{outcome}}")], w=8, desc="ok, partial (some endpoints failed), refused_old, invalid.")
    b.ts("Endpoint loads per minute", [
        q(f"60 * sum by (job_id, cause, result) (rate(asyncwebrl_weightsync_loads_total{{{J}}}[{RI}]))",
          "{{job_id}} {{cause}} {{result}}")], w=8, desc="cause: publish or catch_up.")
    b.ts("Load failures per minute", [
        q(f"60 * sum by (job_id) (rate(asyncwebrl_weightsync_load_failures_total{{{J}}}[{RI}]))", "{{job_id}}"),
        q(f"60 * sum by (job_id) (rate(asyncwebrl_trainer_publish_failures_total{{{J}}}[{RI}]))",
          "trainer: failed publishes {{job_id}}")], w=8,
        desc="weightsync loads that failed after retries, and the versions the trainer published through "
             "weightsync that some engine failed to load (or weightsync did not answer).")
    b.ts("Publish latency", quantiles("asyncwebrl_weightsync_publish_seconds", J), "s", w=8,
         desc="Verification and the fan-out to every endpoint.")
    b.ts("Verification and endpoint load latency", [
        *quantiles("asyncwebrl_weightsync_verify_seconds", J, qs=(0.95,), legend="verify"),
        *quantiles("asyncwebrl_weightsync_endpoint_load_seconds", J, qs=(0.5, 0.95), legend="endpoint load")], "s",
        w=8)
    b.ts("Checkpoint bytes loaded per second", [
        q(f"sum by (job_id) (rate(asyncwebrl_weightsync_bytes_loaded_total{{{J}}}[{RI}]))", "{{job_id}}")], "Bps", w=8)
    b.row("Engines and trainer")
    b.ts("Engine weight load time", quantiles("asyncwebrl_engine_weight_load_seconds", J), "s", w=8,
         desc="update_weights_from_disk inside the engine.")
    b.ts("Engines by served version", [
        q(f"count by (job_id, version) (asyncwebrl_engine_weight_version_info{{{J}}} == 1)",
          "{{job_id}} v{{version}}")],
        stack=True, w=8)
    b.ts("Trainer publish time per step", [
        q(f'sum by (job_id) (rate(asyncwebrl_trainer_phase_seconds_total{{{J}, phase="publish"}}[{RI}])) / '
          f'sum by (job_id) (rate(asyncwebrl_trainer_steps_total{{{J}}}[{RI}]))', "{{job_id}}")], "s", w=8,
        desc="Seconds of each training step spent publishing the new version.")
    return b


BOARDS = (overview, envfleet, rollout, buffer, trainer, weightsync)


def render() -> dict[str, str]:
    """{file name: JSON text} of every dashboard."""
    return {f"{f.__name__}.json": json.dumps(f().json(), indent=2) + "\n" for f in BOARDS}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"stale dashboards (run python charts/generate_dashboards.py): {', '.join(stale)}")


if __name__ == "__main__":
    main()
