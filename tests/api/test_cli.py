"""The ``asyncwebrl`` command-line client as a user runs it: a subprocess against
a real local stack (redis-server, envfleet with Chromium, buffer, weightsync and
the api, all started by ``asyncwebrl up`` as detached processes), a job that
really trains the tiny model on CPU, and ``asyncwebrl down`` that leaves no
process behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import urllib.request

import pytest
import yaml

from asyncwebrl.api.stack import load_stack
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.common.localstack import free_port
from tests.helpers import wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "jobs" / "demo.yaml"
SYNC = ROOT / "examples" / "jobs" / "sync-baseline.yaml"
WEBGYM = ROOT / "examples" / "jobs" / "webgym.yaml"
SCRIPT = pathlib.Path(sys.executable).parent / "asyncwebrl"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "asyncwebrl.api.cli"]
COMPONENTS = ("redis", "buffer", "envfleet", "weightsync", "api")
SUBCOMMANDS = ("up", "down", "status", "submit", "watch", "logs", "eval", "report", "cancel", "viewer")


def cli(*args: str, run_dir: pathlib.Path | None = None, timeout: float = 120,
        env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("ASYNCWEBRL_API_URL", "ASYNCWEBRL_API_TOKEN", "ASYNCWEBRL_RUN_DIR")}
    pre = ["--run-dir", str(run_dir)] if run_dir is not None else []
    return subprocess.run([*CLI, *pre, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**base, **(env or {})})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init to reap it is not running
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def stack_json(run_dir: pathlib.Path) -> dict:
    return json.loads((run_dir / "stack.json").read_text())


def table_rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.split()}


# --- without a stack -------------------------------------------------------------


def test_every_subcommand_has_help():
    top = cli("--help")
    assert top.returncode == 0, top.stderr
    for name in SUBCOMMANDS:
        assert name in top.stdout
        out = cli(name, "--help")
        assert out.returncode == 0, out.stderr
        assert f"usage: asyncwebrl {name}" in out.stdout and "--api" in out.stdout
    # Also as a module.
    mod = subprocess.run([sys.executable, "-m", "asyncwebrl.api.cli", "watch", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert mod.returncode == 0 and "--until-version" in mod.stdout


def test_an_unreachable_api_gets_a_friendly_error(tmp_path):
    api = f"http://127.0.0.1:{free_port()}"
    for args in (["--api", api, "status"], ["status", "some-job", "--api", api]):
        out = cli(*args, run_dir=tmp_path)
        assert out.returncode == 1
        assert "not reachable" in out.stderr and "asyncwebrl up" in out.stderr
        assert "Traceback" not in out.stderr
    # No stack and no --api: the default local address, and the same advice.
    out = cli("status", run_dir=tmp_path / "none")
    assert out.returncode == 1 and "asyncwebrl up" in out.stderr + out.stdout


def test_a_bad_job_document_exits_2_naming_the_field(tmp_path):
    bad = yaml.safe_load(DEMO.read_text())
    bad["rollout"]["group_size"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    # Validated locally: no api is needed to refuse it.
    out = cli("--api", f"http://127.0.0.1:{free_port()}", "submit", str(path), run_dir=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "rollout.group_size" in out.stderr and "not reachable" not in out.stderr

    path.write_text("name: x\nalgorithm: {kk: 1}\n")
    out = cli("submit", str(path), run_dir=tmp_path)
    assert out.returncode == 2 and "algorithm.kk" in out.stderr
    path.write_text("name: [unclosed\n")
    out = cli("submit", str(path), run_dir=tmp_path)
    assert out.returncode == 2 and "YAML" in out.stderr
    out = cli("submit", str(tmp_path / "missing.yaml"), run_dir=tmp_path)
    assert out.returncode == 2 and "missing.yaml" in out.stderr
    out = cli("submit", str(DEMO), "--set", "algorithm.step_norm=sometimes", run_dir=tmp_path,
              env={"ASYNCWEBRL_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert out.returncode == 2 and "algorithm.step_norm" in out.stderr


def test_the_example_jobs_are_valid():
    demo = JobSpec.model_validate(yaml.safe_load(DEMO.read_text()))
    assert demo.model.path == "tiny/qwen2_5_vl" and demo.tasks.tasks == ["miniwob/click-test"]
    assert demo.rollout.mode == "async" and demo.algorithm.step_norm == "constant" and demo.algorithm.k == 10
    sync = JobSpec.model_validate(yaml.safe_load(SYNC.read_text()))
    assert sync.rollout.mode == "sync" and sync.rollout.max_staleness == 0
    # The baseline is the same job but for the mode.
    same = {"mode", "max_staleness"}
    assert {k: v for k, v in sync.rollout.model_dump().items() if k not in same} == \
           {k: v for k, v in demo.rollout.model_dump().items() if k not in same}
    assert sync.algorithm == demo.algorithm and sync.tasks == demo.tasks and sync.model == demo.model
    # Every example job is a valid document, whatever its name.
    examples = sorted((ROOT / "examples" / "jobs").glob("*.y*ml"))
    assert {DEMO, SYNC, WEBGYM} <= set(examples)
    for path in examples:
        JobSpec.model_validate(yaml.safe_load(path.read_text()))
    # The WebGym example names the sample task set (its default name: the file's) and a judge with a placeholder
    # URL, its key by where it is.
    web = JobSpec.model_validate(yaml.safe_load(WEBGYM.read_text()))
    assert web.tasks.taskset == "webgym-sample" and (ROOT / "examples" / "tasksets" / "webgym-sample.jsonl").is_file()
    judge = web.judge
    assert judge is not None and judge.api_key_secret == "judge-api-key" and judge.url.startswith("https://")
    assert web.algorithm.warm_start_steps == 0 and not web.tasks.tasks


def test_the_eval_table_shows_success_by_difficulty_and_a_task_sets_splits():
    from asyncwebrl.api.cli import _eval_table

    result = {"success": 0.25, "episodes": 8,
              "by_difficulty": {"hard": {"success": 0.0, "episodes": 4}, "easy": {"success": 0.5, "episodes": 4}},
              "by_split": {"test_ood": {"success": 0.0, "episodes": 4}, "test": {"success": 0.5, "episodes": 4}}}
    lines = [line.split() for line in _eval_table({"result": result}).splitlines()]
    assert lines == [["DIFFICULTY", "SUCCESS", "EPISODES"], ["easy", "0.500", "4"], ["hard", "0.000", "4"],
                     ["split", "test", "0.500", "4"], ["split", "test_ood", "0.000", "4"], ["all", "0.250", "8"]]
    assert "split" not in _eval_table({"result": {**result, "by_split": {}}})


# --- the local stack, in order: up, a job, down --------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, chromium_path):
    run_dir = tmp_path_factory.mktemp("cli") / "stack"
    state = {"run_dir": run_dir, "chromium": chromium_path}
    yield state
    # Whatever the tests did, leave nothing running.
    if (run_dir / "stack.json").exists():
        cli("down", run_dir=run_dir, timeout=180)
        for comp in stack_json(run_dir).get("components", {}).values():
            if comp.get("pid") and alive(comp["pid"]):
                os.killpg(comp["pid"], signal.SIGKILL)


def _up(stack) -> subprocess.CompletedProcess:
    return cli("up", "--chromium-path", stack["chromium"], "--api-port", "0", "--browsers", "1", "--contexts", "4",
               run_dir=stack["run_dir"], timeout=240)


def test_up_starts_every_component(stack):
    run_dir = stack["run_dir"]
    out = _up(stack)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = table_rows(out.stdout)
    for name in COMPONENTS:
        assert rows[name][2] == "yes", out.stdout  # NAME PID ALIVE PORT HTTP
    saved = stack_json(run_dir)
    assert stat.S_IMODE((run_dir / "stack.json").stat().st_mode) == 0o600
    assert all(saved[k] for k in ("api_token", "auth_token", "redis_password"))
    for name in COMPONENTS:
        assert alive(saved["components"][name]["pid"])
        assert (run_dir / "logs" / f"{name}.log").exists()
    # Detached: the stack outlived the command, in sessions of its own.
    assert all(os.getsid(saved["components"][n]["pid"]) == saved["components"][n]["pid"] for n in COMPONENTS)
    # No secret on a command line.
    for name in COMPONENTS:
        cmdline = pathlib.Path(f"/proc/{saved['components'][name]['pid']}/cmdline").read_bytes().decode()
        assert not any(saved[k] in cmdline for k in ("api_token", "auth_token", "redis_password")), name
    # envfleet has no Redis access: no Redis flag, no password; its screenshots go through the buffer.
    envfleet = saved["components"]["envfleet"]["pid"]
    cmdline = pathlib.Path(f"/proc/{envfleet}/cmdline").read_bytes().decode().split("\0")
    assert "--redis-url" not in cmdline and "--key-prefix" not in cmdline
    assert cmdline[cmdline.index("--buffer-target") + 1] == f"127.0.0.1:{saved['components']['buffer']['grpc_port']}"
    environ = pathlib.Path(f"/proc/{envfleet}/environ").read_bytes().decode(errors="replace").split("\0")
    assert not any(v.startswith("ASYNCWEBRL_REDIS_PASSWORD=") for v in environ)
    assert f"ASYNCWEBRL_AUTH_TOKEN={saved['auth_token']}" in environ
    stack["saved"] = saved


def test_up_again_is_idempotent(stack):
    out = _up(stack)
    assert out.returncode == 0, out.stderr
    assert "already up" in out.stdout
    again = stack_json(stack["run_dir"])
    assert {n: c["pid"] for n, c in again["components"].items()} == \
           {n: c["pid"] for n, c in stack["saved"]["components"].items()}
    assert again["api_token"] == stack["saved"]["api_token"]


def test_up_restarts_only_what_died(stack):
    before = stack_json(stack["run_dir"])["components"]
    os.kill(before["buffer"]["pid"], signal.SIGKILL)
    out = cli("status", run_dir=stack["run_dir"])
    assert table_rows(out.stdout)["buffer"][2] == "no"
    out = _up(stack)
    assert out.returncode == 0, out.stderr
    after = stack_json(stack["run_dir"])["components"]
    assert after["buffer"]["pid"] != before["buffer"]["pid"] and alive(after["buffer"]["pid"])
    assert after["buffer"]["grpc_port"] == before["buffer"]["grpc_port"]  # same address: nothing else restarts
    assert all(after[n]["pid"] == before[n]["pid"] for n in COMPONENTS if n != "buffer")


def test_up_gives_new_ports_to_a_component_whose_port_was_taken_meanwhile(stack, monkeypatch):
    """``up`` chooses every port before its first wave starts; another process can bind one before the
    component that was given it does. Here the api's gRPC port is taken just before the api is started."""
    from asyncwebrl.api import stack as stack_module

    before = stack_json(stack["run_dir"])["components"]
    os.kill(before["api"]["pid"], signal.SIGKILL)
    wait_until(lambda: not alive(before["api"]["pid"]), 10, "the api to die")
    real_spawn, held = stack_module._spawn, []

    def racing(name, st, run_dir):
        if name == "api" and not held:
            busy = socket.socket()
            busy.bind(("127.0.0.1", st["components"]["api"]["grpc_port"]))
            busy.listen()
            held.append((busy, busy.getsockname()[1]))
        real_spawn(name, st, run_dir)

    monkeypatch.setattr(stack_module, "_spawn", racing)
    try:
        _, started = stack_module.up(stack["run_dir"])
    finally:
        for busy, _ in held:
            busy.close()
    after = stack_json(stack["run_dir"])
    taken = held[0][1]
    assert started and len(held) == 1 and alive(after["components"]["api"]["pid"])
    assert after["components"]["api"]["grpc_port"] != taken
    assert after["api_url"] == f"http://127.0.0.1:{after['components']['api']['api_port']}"
    assert f"cannot bind 127.0.0.1:{taken}" in (stack["run_dir"] / "logs" / "api.log").read_text()
    assert all(after["components"][n]["pid"] == before[n]["pid"] for n in COMPONENTS if n != "api")
    assert cli("status", run_dir=stack["run_dir"]).returncode == 0


def test_status_shows_the_stack_and_no_jobs(stack):
    out = cli("status", run_dir=stack["run_dir"])
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert all(rows[n][2] == "yes" for n in COMPONENTS)
    assert "(none)" in out.stdout
    # A wrong token is the api's problem+json detail, exit 1.
    out = cli("status", "--token", "wrong", run_dir=stack["run_dir"])
    assert out.returncode == 1 and out.stderr.startswith("error: authorization")


def test_submit_status_and_watch_a_training_job(stack, tmp_path):
    job = yaml.safe_load(DEMO.read_text())
    job["name"] = "cli-demo"
    # Quick on CPU: no warm-start, tiny groups, and the all-fail groups of a random model kept so that
    # versions come. max_steps is far more than the tests wait for (30 steps were done before the cancel
    # once the trainer and engine stopped fighting over the cores): cancel finds it running.
    job["algorithm"].update(max_steps=1000, warm_start_steps=0, keep_zero_variance=True, minibatches=1,
                            warmup_steps=0, lr=1e-5)
    job["rollout"].update(group_size=2, batch_groups=1, max_staleness=2, concurrency=4, max_new_tokens=16,
                          steps_easy=2)
    job["resources"]["device"] = "cpu"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    out = cli("submit", str(path), run_dir=stack["run_dir"])
    assert out.returncode == 0, out.stderr
    jid = out.stdout.strip()
    assert jid.startswith("cli-demo-") and "\n" not in jid
    stack["job"] = jid

    out = cli("status", jid, run_dir=stack["run_dir"])
    assert out.returncode == 0, out.stderr
    assert jid in out.stdout and "state" in out.stdout and "version" in out.stdout
    assert cli("status", run_dir=stack["run_dir"]).stdout.count(jid) == 1

    out = cli("watch", jid, "--until-version", "1", "--timeout", "300", "--interval", "1",
              run_dir=stack["run_dir"], timeout=330)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reached version" in out.stdout
    assert any(line.split()[1].startswith("v") for line in out.stdout.splitlines() if "running" in line)
    # One publisher, as in a cluster: the stack's weightsync took the version to the job's engine.
    ws = load_stack(stack["run_dir"])["components"]["weightsync"]["http_port"]

    def published() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{ws}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        lines = [l for l in text.splitlines() if l.startswith(f'asyncwebrl_weightsync_published_version{{job="{jid}"}}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    wait_until(lambda: published() >= 1, timeout=60, what="weightsync published the job's version 1")

    out = cli("status", jid, run_dir=stack["run_dir"])
    rows = table_rows(out.stdout)
    assert {"engine-0", "trainer", "rollout"} <= set(rows), out.stdout
    assert all(rows[r][2] == "yes" for r in ("engine-0", "trainer", "rollout")), out.stdout
    stack["processes"] = [int(rows[r][1]) for r in ("engine-0", "trainer", "rollout")]


def test_watch_shows_the_trainer_metrics(stack):
    out = cli("watch", stack["job"], "--until-version", "1", "--timeout", "60", run_dir=stack["run_dir"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "serves no metrics series" not in out.stderr
    first = out.stdout.splitlines()[0]
    assert "traj/h -" not in first and "env steps/s -" not in first, first
    assert " ess " in first and " entropy " in first and " invalid " in first, "off-policy health is shown"


def test_watch_warns_of_a_collapse_from_off_policy_health():
    from asyncwebrl.api.cli import health_warnings, progress_line

    healthy = {"step": 3, "version": 3, "ess": 0.97, "clip_fraction": 0.01, "behav_gap": 0.001,
               "invalid_action_rate": 0.1, "entropy": 4.2}
    assert health_warnings(healthy) == [] and "WARNING" not in progress_line({"state": "running"}, healthy)
    sick = {**healthy, "ess": 0.2, "invalid_action_rate": 0.9}
    line = progress_line({"state": "running"}, sick)
    assert "WARNING: behaviour ESS 0.20 below 0.5; invalid actions 0.90 above 0.5" in line, line


def test_logs_of_the_trainer(stack):
    out = cli("logs", stack["job"], "--role", "trainer", "--tail", "50", run_dir=stack["run_dir"])
    assert out.returncode == 0, out.stderr
    assert 0 < len(out.stdout.splitlines()) <= 50
    assert "version" in out.stdout  # the trainer logs each version it publishes
    out = cli("logs", stack["job"], "--role", "engine-0", "--tail", "5", run_dir=stack["run_dir"])
    assert out.returncode == 0 and len(out.stdout.splitlines()) <= 5


def test_eval_waits_for_success_per_difficulty(stack):
    out = cli("eval", stack["job"], "--groups", "1", "--wait", "--timeout", "150", "--interval", "1",
              run_dir=stack["run_dir"], timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = table_rows(out.stdout)
    assert "easy" in rows and "all" in rows, out.stdout


def test_report_compares_the_untrained_model_with_the_trained_one(stack, tmp_path):
    out = cli("eval", stack["job"], "--base", "--groups", "1", "--wait", "--timeout", "150", "--interval", "1",
              run_dir=stack["run_dir"], timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " at version 0:" in out.stdout.splitlines()[0], out.stdout
    out = cli("report", stack["job"], "--out", str(tmp_path / "r"), run_dir=stack["run_dir"])
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["evaluations"]["base"]["version"] == 0 and report["evaluations"]["final"]["version"] > 0, report
    assert "total_margin" in report and (tmp_path / "r" / "learning_curve.png").stat().st_size > 10_000
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| untrained model |", "| after RL |"))]
    assert [r.split("|")[1].strip() for r in rows if "| all |" in r] == ["untrained model", "after RL"], out.stdout


def test_viewer_prints_the_url_with_the_token(stack):
    saved = stack_json(stack["run_dir"])
    out = cli("viewer", stack["job"], run_dir=stack["run_dir"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{saved['api_url']}/viewer/{stack['job']}#token={saved['api_token']}"
    out = cli("viewer", "no-such-job", run_dir=stack["run_dir"])
    assert out.returncode == 1 and "no-such-job" in out.stderr


def test_cancel_stops_the_job(stack):
    out = cli("cancel", stack["job"], run_dir=stack["run_dir"], timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cancelled" in out.stdout
    assert not any(alive(pid) for pid in stack["processes"])
    out = cli("watch", stack["job"], run_dir=stack["run_dir"])
    assert out.returncode == 1 and "cancelled" in out.stdout
    out = cli("cancel", "no-such-job", run_dir=stack["run_dir"])
    assert out.returncode == 1 and out.stderr.startswith("error: job_id")


def test_down_stops_every_process(stack):
    run_dir = stack["run_dir"]
    pids = {n: c["pid"] for n, c in stack_json(run_dir)["components"].items()}
    out = cli("down", run_dir=run_dir, timeout=180)
    assert out.returncode == 0, out.stderr
    for name in COMPONENTS:
        assert f"stopped {name}" in out.stdout
    assert not [n for n, pid in pids.items() if alive(pid)]
    saved = stack_json(run_dir)
    assert not any(c.get("pid") for c in saved["components"].values())
    assert saved["api_token"] == stack["saved"]["api_token"]  # kept for the next `up`
    out = cli("status", run_dir=run_dir)
    assert out.returncode == 1 and "not reachable" in out.stderr
    assert all(row[2] == "no" for name, row in table_rows(out.stdout).items() if name in COMPONENTS)
    assert "not running" in cli("down", run_dir=run_dir).stdout
