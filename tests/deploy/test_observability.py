"""The Grafana dashboards and Prometheus alert rules in charts/, held to the metrics the services export.

- promtool checks the rule files and runs their unit tests (charts/rules/tests/);
- every dashboard is what charts/generate_dashboards.py writes, parses, has unique panel ids and a
  sane grid, and every panel expression parses (promtool has no checker for bare expressions: each
  one, its ${variables} substituted, becomes a recording rule of a temporary file for
  ``promtool check rules``);
- every metric a dashboard or rule names is exported by a service, with the labels it filters and
  groups by: the names come from real processes (envfleet with Chromium, buffer on a real Redis,
  weightsync, api, an engine with the tiny model, a trainer and a gateway training one tiny job),
  scraped over HTTP, and from the services' prometheus_client registries for the label names;
- ``promtool check metrics`` finds nothing to lint in any service's /metrics.

Names not checked against a service: ``up`` (Prometheus' own), ``redis_*`` (redis_exporter's,
which the buffer does not re-export: it reports its own blob bytes and budget; the names used are
listed in REDIS_EXPORTER below) and ``sglang:*`` (SGLang's own, for jobs whose engines are SGLang
servers: held to SGLANG below, a copy of SGLang's source, and to the source itself where an unpacked
SGLang is at hand).
"""

from __future__ import annotations

import importlib
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import yaml

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess, free_port
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc
from tests.engine.sglang_side import packages as sglang_packages
from tests.helpers import start_envfleet_and_buffer, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
RULES = sorted((CHARTS / "rules").glob("*.yaml"))
RULE_TESTS = sorted((CHARTS / "rules" / "tests").glob("*.yaml"))
DASHBOARDS = sorted((CHARTS / "dashboards").glob("*.json"))

TOKEN = "observability-token"
PREFIX = "observability-test:"
JOB = "obs"
MODULES = {
    "envfleet": "asyncwebrl.envfleet.metrics", "buffer": "asyncwebrl.buffer.metrics",
    "weightsync": "asyncwebrl.weightsync.metrics", "api": "asyncwebrl.api.metrics",
    "engine": "asyncwebrl.engine.metrics", "trainer": "asyncwebrl.trainer.metrics",
    "rollout": "asyncwebrl.rollout.metrics",
}
# Labels Prometheus' scrape configuration attaches (charts/README.md, "Scrape contract").
TARGET_LABELS = {"job", "instance", "job_id"}
# redis_exporter (oliver006/redis_exporter, Debian's prometheus-redis-exporter) names the rules and
# the buffer dashboard use.
REDIS_EXPORTER = {"redis_memory_used_bytes", "redis_memory_max_bytes", "redis_commands_processed_total",
                  "redis_connected_clients", "redis_db_keys"}
# SGLang's metric families the dashboards query, as SGLang 0.5.20 and 0.5.23 define them in
# sglang/srt/observability/metrics_collector.py (read in both wheels on 2026-12-04; line of the
# name= in 0.5.20, 0.5.23), with the labels SGLang puts on them: SchedulerMetricsCollector's gauges get
# the scheduler's labels (dp_rank with --dp-size > 1, priority with --enable-priority-scheduling),
# TokenizerMetricsCollector's series the tokenizer's plus is_streaming. Prometheus' scrape adds
# TARGET_LABELS. test_sglang_names_are_sglangs holds this copy to the source where one is unpacked.
SGLANG_SCHEDULER_LABELS = {"model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank", "dp_rank", "priority"}
SGLANG_TOKENIZER_LABELS = {"model_name", "engine_type", "priority"}
SGLANG = {
    "sglang:num_running_reqs": ("gauge", SGLANG_SCHEDULER_LABELS),  # 280, 365
    "sglang:num_queue_reqs": ("gauge", SGLANG_SCHEDULER_LABELS),  # 286, 371
    "sglang:gen_throughput": ("gauge", SGLANG_SCHEDULER_LABELS),  # 298, 383
    "sglang:token_usage": ("gauge", SGLANG_SCHEDULER_LABELS),  # 320, 405
    "sglang:prompt_tokens_total": ("counter", SGLANG_TOKENIZER_LABELS | {"is_streaming"}),  # 1559, 1856
    "sglang:generation_tokens_total": ("counter", SGLANG_TOKENIZER_LABELS | {"is_streaming"}),  # 1564, 1861
    "sglang:time_to_first_token_seconds": ("histogram", SGLANG_TOKENIZER_LABELS | {"is_streaming"}),  # 1744, 2041
    "sglang:e2e_request_latency_seconds": ("histogram", SGLANG_TOKENIZER_LABELS | {"is_streaming"}),  # 1761, 2068
}
# Values of the dashboards' variables for parsing.
VARIABLES = {"job_id": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
NUMBER = re.compile(r"(?:[0-9]+(?:ms|[smhdwy]))+|0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: run scripts/bootstrap.sh (Debian package prometheus)"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=60)


# --- expressions ---------------------------------------------------------------------------------

def substitute(expr: str) -> str:
    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in VARIABLES, f"unknown variable ${name} in {expr!r}"
        return VARIABLES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, expr)


def _skip_string(s: str, i: int) -> int:
    quote, i = s[i], i + 1
    while s[i] != quote:
        i += 2 if s[i] == "\\" else 1
    return i + 1


def _group_end(s: str, i: int, open_: str = "(", close: str = ")") -> int:
    """Index after the bracket group starting at s[i] == open_."""
    depth = 0
    while True:
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
            continue
        depth += (c == open_) - (c == close)
        i += 1
        if depth == 0:
            return i


def _matchers(body: str) -> set[str]:
    return set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*[\"'`]", body))


def parse(expr: str) -> tuple[list[tuple[str, set[str]]], list[tuple[set[str], set[str]]]]:
    """The vector selectors of a PromQL expression as (metric name, label names matched), and every
    ``by (...)`` grouping as (labels, metric names of the aggregated expression). A small scanner,
    enough for the expressions of charts/ (promtool parses them properly)."""
    selectors: list[tuple[str, set[str]]] = []
    groupings: list[tuple[set[str], set[str]]] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "[":
            i = _group_end(expr, i, "[", "]")
        elif c == "{":  # a selector without a name: {__name__=~"..."}
            end = _group_end(expr, i, "{", "}")
            body = expr[i + 1:end - 1]
            names = re.search(r'__name__\s*=~?\s*"([^"]+)"', body)
            for name in (names.group(1).split("|") if names else []):
                selectors.append((name, _matchers(body) - {"__name__"}))
            i = end
        elif c.isalpha() or c in "_:":
            m = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*").match(expr, i)
            word, i = m.group(0), m.end()
            j = i
            while j < n and expr[j].isspace():
                j += 1
            if word in LABEL_LISTS:
                if j < n and expr[j] == "(":
                    end = _group_end(expr, j)
                    labels = {x.strip() for x in expr[j + 1:end - 1].split(",") if x.strip()}
                    k = end
                    while k < n and expr[k].isspace():
                        k += 1
                    if word == "by" and k < n and expr[k] == "(":
                        inner = _group_end(expr, k)
                        groupings.append((labels, {s for s, _ in parse(expr[k:inner])[0]}))
                    i = end
            elif word in KEYWORDS or (j < n and expr[j] == "(") or re.match(r"(by|without)\b", expr[j:]):
                continue  # an operator, a function, or an aggregation: sum by (x) (...)
            elif j < n and expr[j] == "{":
                end = _group_end(expr, j, "{", "}")
                selectors.append((word, _matchers(expr[j + 1:end - 1])))
                i = end
            else:
                selectors.append((word, set()))
        elif c.isdigit() or c == ".":  # a duration (offset 1h30m), or a number: 0.95, 1e-3, 0x1f
            i = NUMBER.match(expr, i).end()
        else:
            i += 1
    return selectors, groupings


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, where, expression) of every target and template query."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for p in board["panels"]:
            for t in p.get("targets", []):
                out.append((path.name, f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]))
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
                assert m, f"{path.name}: variable {v['name']}: expected label_values(selector, label)"
                out.append((path.name, f"variable {v['name']}", m.group(1)))
    return out


def rule_exprs() -> list[tuple[str, str, str]]:
    return [(path.name, r.get("alert") or r.get("record"), r["expr"]) for path in RULES
            for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def family_series(name: str, kind: str, labels: set[str]) -> dict[str, set[str]]:
    """The series names a prometheus_client family exposes, with their label names."""
    if kind == "histogram":
        return {name + "_bucket": labels | {"le"}, name + "_sum": set(labels), name + "_count": set(labels)}
    if kind == "counter":
        return {name.removesuffix("_total") + "_total": set(labels)}
    return {name: set(labels)}


def sglang_series() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, (kind, labels) in SGLANG.items():
        out.update(family_series(name, kind, labels))
    return out


def test_the_scanner_finds_names_labels_and_groupings():
    sel, groups = parse('histogram_quantile(0.95, sum by (le, job_id) (rate(a_bucket{x="b{c}", y=~"1|2"}[5m]))) '
                        '/ on (job_id) group_left () max(b_total offset 5m) > bool 1e-3 or vector(0) '
                        'and {__name__=~"c|d", job_id!=""}')
    assert sel == [("a_bucket", {"x", "y"}), ("b_total", set()), ("c", {"job_id"}), ("d", {"job_id"})]
    assert groups == [({"le", "job_id"}, {"a_bucket"})]


# --- rules ------------------------------------------------------------------------------------------

def test_rules_pass_promtool_check_and_their_unit_tests():
    assert RULES and RULE_TESTS
    check = promtool("check", "rules", *map(str, RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    tests = promtool("test", "rules", *map(str, RULE_TESTS))
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_every_alert_has_a_for_a_severity_annotations_and_tests_firing_and_not():
    alerts = {r["alert"]: r for path in RULES for g in yaml.safe_load(path.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    for required in ("AsyncwebrlServiceDown", "AsyncwebrlStaleRejectionsClimbing",
                     "AsyncwebrlBufferBlobBudgetNearlyFull", "AsyncwebrlWeightSyncLoadsFailing",
                     "AsyncwebrlNoTrainingProgress"):
        assert required in alerts
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for t in yaml.safe_load(path.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for:"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        assert rule.get("annotations", {}).get("summary") and rule["annotations"].get("description"), name
        assert name in fired, f"{name}: no unit test where it fires"
        assert name in quiet, f"{name}: no unit test where it stays quiet"


# --- dashboards ---------------------------------------------------------------------------------------

def test_dashboards_are_what_the_generator_writes():
    sys.path.insert(0, str(CHARTS))
    try:
        gen = importlib.import_module("generate_dashboards")
    finally:
        sys.path.remove(str(CHARTS))
    want = gen.render()
    assert sorted(want) == [p.name for p in DASHBOARDS]
    stale = [name for name, text in want.items() if (CHARTS / "dashboards" / name).read_text() != text]
    assert not stale, f"run python charts/generate_dashboards.py: {stale} differ"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_sound(path):
    board = json.loads(path.read_text())
    assert board["uid"] == f"asyncwebrl-{path.stem}" and board["title"] and 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], int] = {}
    uses_job = False
    for p in panels:
        g = p["gridPos"]
        assert 1 <= g["w"] and g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] >= 1, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["title"] and p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["expr"].strip(), p["title"]
            uses_job |= "$job_id" in t["expr"]
    assert uses_job == ("job_id" in variables), "a job_id variable exactly where panels filter by job"


def test_every_dashboard_expression_parses():
    """Each expression as a recording rule: ``promtool check rules`` parses it with Prometheus' parser."""
    exprs = dashboard_exprs()
    groups: dict[str, list] = {}
    where = {}
    for board, at, expr in exprs:
        name = f"dashboard:{pathlib.Path(board).stem}:e{len(where)}"
        where[name] = f"{board} {at}: {expr}"
        groups.setdefault(board, []).append({"record": name, "expr": substitute(expr)})
    doc = {"groups": [{"name": b, "rules": rules} for b, rules in groups.items()]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(doc, f)
        f.flush()
        res = promtool("check", "rules", f.name)
    out = res.stdout + res.stderr
    for name, desc in where.items():  # name the panel behind each error
        out = out.replace(f'"{name}"', f'"{name}" ({desc})')
    assert res.returncode == 0, out
    assert f"{len(exprs)} rules found" in res.stdout


# --- SGLang ---------------------------------------------------------------------------------------

def test_the_dashboards_query_sglang_series_sglang_exports():
    """Every sglang:* series a dashboard or rule names is one of SGLANG's, with the labels it filters and
    groups by; and the rollout dashboard charts running and queued requests, token usage, throughput, TTFT."""
    series = sglang_series()
    problems, used = [], set()
    for source, where, expr in dashboard_exprs() + rule_exprs():
        selectors, groupings = parse(substitute(expr))
        for name, matched in selectors:
            if name.startswith("sglang:"):
                used.add(name)
                if name not in series:
                    problems.append(f"{source} {where}: {name} is not an SGLang series of SGLANG")
                elif matched - series[name] - TARGET_LABELS:
                    problems.append(f"{source} {where}: {name} has no label {sorted(matched - series[name])}")
        for labels, names in groupings:
            if names and all(n.startswith("sglang:") and n in series for n in names):
                known = set().union(*(series[n] for n in names)) | TARGET_LABELS
                if labels - known:
                    problems.append(f"{source} {where}: grouped by {sorted(labels - known)}, "
                                    f"which {sorted(names)} lack")
    assert not problems, "\n".join(problems)
    rollout = {n for board, _, expr in dashboard_exprs() if board == "rollout.json"
               for n, _ in parse(substitute(expr))[0]}
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:gen_throughput",
                 "sglang:generation_tokens_total", "sglang:time_to_first_token_seconds_bucket"):
        assert name in rollout, f"the rollout dashboard does not chart {name}"
    assert used <= set(series)


def sglang_families(package: pathlib.Path) -> dict[str, tuple[str, set[str]]]:
    """{name: (type, extra label names)} of every ``Gauge|Counter|Histogram|Summary(name="sglang:...")`` in
    an SGLang package's srt/ (extra: the quoted names its labelnames adds to the collector's labels)."""
    call = re.compile(r"\b(Gauge|Counter|Histogram|Summary)\(\s*name\s*=\s*[\"'](sglang:[a-zA-Z0-9_:]+)[\"']")
    out: dict[str, tuple[str, set[str]]] = {}
    for path in sorted((package / "srt").rglob("*.py")):
        text = path.read_text(errors="replace")
        for m in call.finditer(text):
            rest = text[m.end():]
            end = re.search(r"\n\s*\)", rest)  # the call's closing line (black's layout)
            body = rest[:end.start() if end else 2000]
            labelnames = re.search(r"labelnames\s*=\s*([^\n]*)", body)
            extra = set(re.findall(r"[\"']([a-zA-Z_][a-zA-Z0-9_]*)[\"']", labelnames.group(1))) if labelnames else set()
            out[m.group(2)] = (m.group(1).lower(), extra)
    return out


def test_sglang_names_are_sglangs():
    """SGLANG against SGLang's source: each family is defined there, of that type, with those extra labels;
    the collectors' label dicts name SGLang's scheduler and tokenizer labels."""
    sources = sglang_packages()
    for package in sources:
        families = sglang_families(package)
        assert len(families) > 50, f"{package}: not an SGLang package ({len(families)} sglang:* families)"
        collector = (package / "srt" / "observability" / "metrics_collector.py").read_text()
        for label in SGLANG_SCHEDULER_LABELS | SGLANG_TOKENIZER_LABELS:
            assert re.search(rf"[\"']{label}[\"']", collector), f"{package}: no label {label}"
        for name, (kind, labels) in SGLANG.items():
            assert name in families, f"{package}: SGLang defines no {name}"
            found_kind, extra = families[name]
            assert found_kind == kind, f"{package}: {name} is a {found_kind}, not a {kind}"
            base = SGLANG_SCHEDULER_LABELS if labels >= SGLANG_SCHEDULER_LABELS else SGLANG_TOKENIZER_LABELS
            assert extra == labels - base, f"{package}: {name} adds labels {sorted(extra)}, not {sorted(labels - base)}"


# --- the services ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scrapes(redis_server, chromium_path, tmp_path_factory) -> dict[str, str]:
    """/metrics of every service, taken after a tiny job trained a step (so labelled series exist)."""
    logs = tmp_path_factory.mktemp("observability")
    ckpt = logs / "checkpoints"
    ckpt.mkdir()
    model = SHIPPED / "qwen2_5_vl"
    # The engine loads its model while envfleet and the buffer start.
    procs: dict = {"engine": EngineProcess(
        ["--model-path", str(model), "--model-roots", f"{model.parent},{ckpt}", "--device", "cpu",
         "--registry-redis-url", redis_server.url, "--key-prefix", PREFIX, "--job-id", JOB,
         "--endpoint-id", f"{JOB}-engine-0", "--heartbeat-s", "1"],
        logs / "engine.log", env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": redis_server.password})}
    envfleet = buffer = None
    try:
        envfleet, buffer, env, common = start_envfleet_and_buffer(redis_server, PREFIX, TOKEN, logs, chromium_path)
        # The one publisher, ready before the trainer that publishes through it.
        procs["weightsync"] = ServiceProcess("weightsync", [*common, "--checkpoint-roots", str(ckpt)], env,
                                             logs / "weightsync.log")
        procs["weightsync"].wait_ready(120)
        # The job's settings, as the api sends them before it starts a trainer.
        ch = channel(buffer.target, TOKEN)
        buffer_pb2_grpc.BufferServiceStub(ch).ConfigureJob(buffer_pb2.ConfigureJobRequest(
            job_id=JOB, batch_groups=1, max_staleness=1, keep_zero_variance=True))
        ch.close()
        procs["trainer"] = ServiceProcess("trainer", [
            *common, "--job-id", JOB, "--buffer-target", buffer.target, "--model-path", str(model),
            "--checkpoint-dir", str(ckpt), "--device", "cpu", "--batch-groups", "1", "--max-staleness", "1",
            "--keep-zero-variance", "--publish", "weightsync", "--weightsync-target", procs["weightsync"].target],
            env, logs / "trainer.log")
        procs["rollout"] = ServiceProcess("rollout", [
            *common, "--job-id", JOB, "--envfleet-target", envfleet.target, "--buffer-target", buffer.target,
            "--model-path", str(model), "--tasks", "miniwob/click-test", "--difficulties", "easy",
            "--group-size", "2", "--max-concurrent-episodes", "2", "--max-new-tokens", "16", "--steps-easy", "2"],
            env, logs / "rollout.log")
        procs["api"] = ServiceProcess("api", [*common, "--api-port", str(free_port())],
                                      {**env, "ASYNCWEBRL_API_TOKEN": TOKEN}, logs / "api.log")
        for p in procs.values():
            p.wait_ready(120)
        ports = {"envfleet": envfleet.http_port, "buffer": buffer.http_port, "engine": procs["engine"].port,
                 **{n: p.http_port for n, p in procs.items() if n != "engine"}}

        def scrape(name: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/metrics", timeout=10) as resp:
                return resp.read().decode()

        # One training step: the trainer, the gateway and the engine have observed their labelled series.
        wait_until(lambda: re.search(r"^asyncwebrl_trainer_steps_total [1-9]", scrape("trainer"), re.M), 120,
                   "a training step")
        time.sleep(1.5)  # the buffer's sweeper refreshes its per-job gauges every second
        return {name: scrape(name) for name in ports}
    finally:
        for name in ("rollout", "trainer", "engine", "weightsync", "api"):
            if name in procs:
                procs[name].stop()
        for p in (buffer, envfleet):
            if p is not None:
                p.stop()


def exposition_names(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Series names of a scrape (families without samples included, from their TYPE lines) and the
    label names seen per series name."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.update(name + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", line)
            names.add(m.group(1))
            labels.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))
    return names, labels


def registry_labels() -> dict[str, set[str]]:
    """Label names of every series name the services' metric modules define (observed or not)."""
    from prometheus_client import REGISTRY

    importlib.import_module("asyncwebrl.common.grpcserver")
    for module in MODULES.values():
        importlib.import_module(module)
    out: dict[str, set[str]] = {}
    for name, collector in REGISTRY._names_to_collectors.items():
        labelnames = set(getattr(collector, "_labelnames", ()))
        if getattr(collector, "_type", "") == "histogram" and name.endswith("_bucket"):
            labelnames.add("le")
        out[name] = labelnames
    return out


SERVICES = ("envfleet", "buffer", "weightsync", "api", "engine", "trainer", "rollout")


@pytest.mark.parametrize("service", SERVICES)
def test_promtool_check_metrics_finds_nothing_to_lint(scrapes, service):
    text = scrapes[service]
    assert "asyncwebrl_" in text
    res = promtool("check", "metrics", stdin=text)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_each_service_exports_its_metrics_module(scrapes):
    from prometheus_client.metrics import MetricWrapperBase

    suffix = {"counter": "_total", "histogram": "_bucket", "summary": "_count"}
    for service, module in MODULES.items():
        mod = importlib.import_module(module)
        want = {m._name + suffix.get(m._type, "") for m in vars(mod).values() if isinstance(m, MetricWrapperBase)}
        exported, _ = exposition_names(scrapes[service])
        assert want and not want - exported, f"{service} does not export {sorted(want - exported)}"


def test_every_metric_and_label_the_charts_name_is_exported(scrapes):
    exported: set[str] = set()
    seen_labels: dict[str, set[str]] = {}
    for text in scrapes.values():
        names, labels = exposition_names(text)
        exported |= names
        for k, v in labels.items():
            seen_labels.setdefault(k, set()).update(v)
    declared = registry_labels()

    sglang = sglang_series()  # SGLang's series: held to SGLang by test_the_dashboards_query_sglang_series_...

    def labels_of(name: str) -> set[str]:
        return declared.get(name, set()) | seen_labels.get(name, set()) | sglang.get(name, set()) | TARGET_LABELS

    problems = []
    used = set()
    for source, where, expr in dashboard_exprs() + rule_exprs():
        selectors, groupings = parse(substitute(expr))
        assert selectors, f"{source} {where}: no metric in {expr!r}"
        for name, matched in selectors:
            used.add(name)
            if name == "up":
                continue
            if name.startswith("sglang:"):
                if name not in sglang:
                    problems.append(f"{source} {where}: {name} is not among the SGLang names checked")
                elif matched - labels_of(name):
                    problems.append(f"{source} {where}: {name} has no label {sorted(matched - labels_of(name))}")
                continue
            if name.startswith("redis_"):
                if name not in REDIS_EXPORTER:
                    problems.append(f"{source} {where}: {name} is not among the redis_exporter names checked")
                continue
            if name not in exported:
                problems.append(f"{source} {where}: no service exports {name}")
            elif matched - labels_of(name):
                problems.append(f"{source} {where}: {name} has no label {sorted(matched - labels_of(name))}")
        for labels, names in groupings:
            known = set().union(*(labels_of(n) for n in names)) if names else TARGET_LABELS
            if "up" in names or any(n.startswith("redis_") for n in names):
                continue
            if labels - known:
                problems.append(f"{source} {where}: grouped by {sorted(labels - known)}, which {sorted(names)} lack")
    assert not problems, "\n".join(problems)
    # The charts cover every service.
    for prefix in ("asyncwebrl_envfleet_", "asyncwebrl_buffer_", "asyncwebrl_engine_", "asyncwebrl_rollout_",
                   "asyncwebrl_trainer_", "asyncwebrl_weightsync_", "asyncwebrl_api_", "grpc_server_", "sglang:"):
        assert any(n.startswith(prefix) for n in used), f"no panel or rule uses {prefix}*"
