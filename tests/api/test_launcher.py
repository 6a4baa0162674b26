"""The local launcher end to end: the api (a real process) starts a job's engine,
gateway and trainer against real envfleet (Chromium), buffer and Redis; the job
trains, a crashed child is restarted, cancel stops every process and keeps the data."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal

import pytest

from asyncwebrl.common.localstack import ServiceProcess, free_port, wait_for_port
from tests.api.test_api import call
from tests.helpers import start_envfleet_and_buffer, wait_until

TOKEN = "launcher-api-token"
SHARED = "launcher-shared-token"
PREFIX = "launcher-test:"
JOB = {
    "name": "tiny", "model": {"path": "tiny/qwen2_5_vl"},
    "tasks": {"tasks": ["miniwob/click-test"], "difficulties": ["easy"]},
    # A random model fails every episode: keep those groups so versions still come.
    "algorithm": {"lr": 1e-5, "keep_zero_variance": True},
    "rollout": {"group_size": 2, "batch_groups": 1, "max_staleness": 1, "concurrency": 4, "max_new_tokens": 16,
                "steps_easy": 2},
    "resources": {"engines": 1, "device": "cpu"},
}


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory, chromium_path):
    logs = tmp_path_factory.mktemp("launcher")
    envfleet, buffer, env, common = start_envfleet_and_buffer(redis_server, PREFIX, SHARED, logs, chromium_path)
    # The one publisher: versions reach the job's engines through weightsync, as under `asyncwebrl up`.
    weightsync = ServiceProcess("weightsync", [*common, "--discovery", "none"], env, logs / "weightsync.log")
    weightsync.wait_ready()
    port = free_port()
    api = ServiceProcess("api", [*common, "--api-port", str(port), "--launcher", "local", "--run-dir",
                                 str(logs / "runs"), "--envfleet-target", envfleet.target, "--buffer-target",
                                 buffer.target, "--weightsync-target", weightsync.target, "--max-restarts", "2"],
                         {**env, "ASYNCWEBRL_API_TOKEN": TOKEN}, logs / "api.log")
    api.wait_ready()
    wait_for_port(port, 30, api.proc)
    api.api_port = port
    api.run_dir = logs / "runs"
    api.start_args = (common, env, envfleet.target, buffer.target, weightsync.target, logs)
    yield api
    assert api.stop(timeout=90) == 0, api.logs()[-3000:]
    weightsync.stop()
    buffer.stop()
    envfleet.stop()


def job_get(api, job_id: str) -> dict:
    status, _, job = call(api, "GET", f"/v1/jobs/{job_id}", token=TOKEN)
    assert status == 200, job
    return job


def flag(pid: int, name: str) -> str:
    """The value of a running process's command-line flag."""
    argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index(name) + 1]


def served_version(port: int) -> str | None:
    """An engine's weight_version, or None while it is not answering."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/model_info")
        return json.loads(conn.getresponse().read())["weight_version"]
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
        return f.read().split()[2] != "Z"


@pytest.mark.timeout(900)
def test_job_trains_survives_a_crash_and_cancel_stops_everything(api, redis_server):
    status, _, job = call(api, "POST", "/v1/jobs", JOB, token=TOKEN)
    assert status == 201, job
    jid = job["id"]
    job = wait_until(lambda: (j := job_get(api, jid))["state"] == "running" and j, 180, "job running")
    procs = {p["role"]: p for p in job["processes"]}
    assert set(procs) == {"engine", "trainer", "rollout"} and all(p["running"] for p in procs.values())
    # Trainer and engine divide the cores instead of each taking all of them.
    share = str(max(1, (os.cpu_count() or 1) // 2))
    for role in ("engine", "trainer"):
        assert flag(procs[role]["pid"], "--torch-threads") == share, role

    wait_until(lambda: job_get(api, jid)["progress"]["version"] >= 2, 300, "two versions trained")

    # A crashed gateway is started again.
    os.kill(procs["rollout"]["pid"], signal.SIGKILL)
    again = wait_until(lambda: next((p for p in job_get(api, jid)["processes"]
                                     if p["role"] == "rollout" and p["restarts"] == 1 and p["running"]), None), 60,
                       "gateway restarted")
    assert again["pid"] != procs["rollout"]["pid"]
    version = job_get(api, jid)["progress"]["version"]
    wait_until(lambda: job_get(api, jid)["progress"]["version"] > version, 300, "training goes on")

    # A crashed engine is started again on a new port, serving its starting model; the trainer loads
    # the current version into it while it waits (the job's only engine: its groups would otherwise
    # all be too stale to train on), and training goes on.
    engine = next(p for p in job_get(api, jid)["processes"] if p["role"] == "engine")
    old_port = flag(engine["pid"], "--http-port")
    version = job_get(api, jid)["progress"]["version"]
    os.kill(engine["pid"], signal.SIGKILL)
    again = wait_until(lambda: next((p for p in job_get(api, jid)["processes"]
                                     if p["role"] == "engine" and p["restarts"] == 1 and p["running"]), None), 60,
                       "engine restarted")
    port = flag(again["pid"], "--http-port")
    assert port != old_port
    wait_until(lambda: (v := served_version(int(port))) is not None and v.isdigit() and int(v) >= version, 180,
               "the restarted engine serves the trainer's version")
    version = job_get(api, jid)["progress"]["version"]
    wait_until(lambda: job_get(api, jid)["progress"]["version"] > version, 300,
               "training goes on with the restarted engine")

    # The trainer's metrics as a time series, paged by step.
    status, _, m = call(api, "GET", f"/v1/jobs/{jid}/metrics?limit=2", token=TOKEN)
    assert status == 200 and [r["step"] for r in m["series"]] == [1, 2] and m["next_since_step"] == 2
    assert {"success", "trajectories_per_hour", "staleness_mean", "loss"} <= set(m["series"][0])
    rest = call(api, "GET", f"/v1/jobs/{jid}/metrics?since_step=2", token=TOKEN)[2]["series"]
    assert rest and rest[0]["step"] == 3
    status, text = raw_get(api, f"/v1/jobs/{jid}/logs/trainer?tail_bytes=100000")
    assert status == 200 and "ready at version" in text, text[-500:]
    assert raw_get(api, f"/v1/jobs/{jid}/logs/..%2Fapi")[0] == 404

    # Evaluate the newest version on held-out seeds while training goes on.
    status, _, ev = call(api, "POST", f"/v1/jobs/{jid}/evaluate", {"groups": 2, "group_size": 2}, token=TOKEN)
    assert status == 202 and ev["state"] == "running" and ev["version"] >= 3, ev
    done = wait_until(lambda: (e := call(api, "GET", f"/v1/jobs/{jid}/evaluations/{ev['id']}", token=TOKEN)[2])[
        "state"] != "running" and e, 300, "evaluation finished")
    assert done["state"] == "succeeded", done
    result = done["result"]
    assert result["episodes"] == 4 and result["by_difficulty"]["easy"]["episodes"] == 4
    assert 0.0 <= result["success"] <= 1.0 and result["mean_steps"] >= 1
    assert [e["id"] for e in call(api, "GET", f"/v1/jobs/{jid}/evaluations", token=TOKEN)[2]["evaluations"]] == [
        ev["id"]]
    # Its episodes are on test seeds and kept for the viewer, beside the trainer's.
    page = call(api, "GET", f"/v1/jobs/{jid}/episodes?source={ev['id']}", token=TOKEN)[2]
    assert page["total"] == 4 and {"train", ev["id"]} <= set(page["sources"])
    assert all(e["seed"] % 10 == 0 and e["version"] == ev["version"] for e in page["episodes"])
    assert call(api, "GET", f"/v1/jobs/{jid}/episodes?source=train", token=TOKEN)[2]["total"] >= 2
    assert call(api, "POST", f"/v1/jobs/{jid}/evaluate", {"version": 999}, token=TOKEN)[0] == 409
    assert call(api, "POST", f"/v1/jobs/{jid}/evaluate", {"groups": 0}, token=TOKEN)[0] == 422

    status, _, cancelled = call(api, "DELETE", f"/v1/jobs/{jid}", token=TOKEN)
    assert status == 200 and cancelled["state"] == "cancelled"
    final = job_get(api, jid)
    assert final["processes"] and not any(p["running"] for p in final["processes"])
    assert not any(alive(p["pid"]) for p in final["processes"])
    # The data stays: checkpoints on disk, counters in Redis.
    assert list((api.run_dir / jid / "checkpoints").glob("v*"))
    assert int(redis_server.client().hget(f"{PREFIX}job:{jid}:counters", "version")) >= 3
    assert (api.run_dir / jid / "logs" / "trainer.log").stat().st_size > 0


def test_a_warm_started_job_ends_when_its_trainer_reaches_max_steps(api):
    algorithm = {**JOB["algorithm"], "max_steps": 1, "warm_start_steps": 1, "warm_start_batch": 2,
                 "warm_start_epochs": 1}
    status, _, job = call(api, "POST", "/v1/jobs", {**JOB, "name": "short", "algorithm": algorithm}, token=TOKEN)
    assert status == 201
    jid = job["id"]
    warm = wait_until(lambda: (j := job_get(api, jid))["phase"] == "warm_start" and j["processes"] and j, 120,
                      "warm-start")
    assert {p["role"] for p in warm["processes"]} == {"warm-trainer", "warm-rollout"}
    done = wait_until(lambda: (j := job_get(api, jid))["state"] in ("succeeded", "failed") and j, 400,
                      "job finished")
    assert done["state"] == "succeeded", done
    assert {p["role"] for p in done["processes"]} == {"engine", "trainer", "rollout"}
    assert not any(p["running"] or alive(p["pid"]) for p in done["processes"])
    # The warm-start's supervised step has its own series; RL started from its weights (version 0).
    assert [r["step"] for r in call(api, "GET", f"/v1/jobs/{jid}/metrics?phase=warm_start", token=TOKEN)[2][
        "series"]] == [1]
    assert (api.run_dir / jid / "warm" / "v00000001" / "manifest.json").is_file()


def test_a_job_that_cannot_start_fails_with_the_reason(api):
    status, _, job = call(api, "POST", "/v1/jobs", {**JOB, "name": "nomodel", "model": {"path": "nowhere/model"}},
                          token=TOKEN)
    assert status == 201
    done = wait_until(lambda: (j := job_get(api, job["id"]))["state"] == "failed" and j, 30, "job failed")
    assert done["reason"].startswith("launch: model.path")


def raw_get(api, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    text = resp.read().decode(errors="replace")
    conn.close()
    return resp.status, text


def _another_api(api, name: str) -> ServiceProcess:
    common, env, envfleet, buffer, weightsync, logs = api.start_args
    port = free_port()
    other = ServiceProcess("api", [*common, "--api-port", str(port), "--launcher", "local", "--run-dir",
                                   str(api.run_dir), "--envfleet-target", envfleet, "--buffer-target", buffer,
                                   "--weightsync-target", weightsync],
                           {**env, "ASYNCWEBRL_API_TOKEN": TOKEN}, logs / f"{name}.log")
    other.wait_ready()
    wait_for_port(port, 30, other.proc)
    other.api_port = port
    return other


@pytest.mark.timeout(600)
def test_a_restarted_api_resumes_its_running_jobs(api):
    first = _another_api(api, "api-first")
    status, _, job = call(first, "POST", "/v1/jobs", {**JOB, "name": "resumed"}, token=TOKEN)
    assert status == 201
    jid = job["id"]
    wait_until(lambda: job_get(first, jid)["progress"]["version"] >= 1, 300, "first version")
    pids = [p["pid"] for p in job_get(first, jid)["processes"]]
    assert first.stop(timeout=90) == 0, first.logs()[-3000:]
    assert not any(alive(pid) for pid in pids)  # SIGTERM to the api stops its job's processes

    second = _another_api(api, "api-second")
    try:
        wait_until(lambda: (j := job_get(second, jid))["state"] == "running" and j["processes"] and all(
            p["running"] for p in j["processes"]), 180, "job running again")
        assert not set(pids) & {p["pid"] for p in job_get(second, jid)["processes"]}
        # The trainer resumes from its checkpoints at the version it had reached.
        log = api.run_dir / jid / "logs" / "trainer.log"
        wait_until(lambda: "resumed from" in log.read_text(), 120, "trainer resumed")
        resumed = int(log.read_text().split("ready at version ")[-1].split(",")[0])
        assert resumed >= 1
        assert call(second, "DELETE", f"/v1/jobs/{jid}", token=TOKEN)[0] == 200
        assert not any(p["running"] for p in job_get(second, jid)["processes"])
    finally:
        assert second.stop(timeout=90) == 0, second.logs()[-3000:]


async def test_a_jobs_judge_key_reaches_the_gateway_in_its_environment_never_on_argv(tmp_path, monkeypatch):
    """Locally the api passes its own ASYNCWEBRL_JUDGE_API_KEY to the gateways; the job names only where
    the key is, and the gateway's command line (which `ps` shows) never holds it."""
    import types

    from asyncwebrl.api.children import Child
    from asyncwebrl.api.config import ApiConfig
    from asyncwebrl.api.jobargs import rollout_args
    from asyncwebrl.api.jobspec import JobSpec
    from asyncwebrl.api.launcher import LocalLauncher
    from asyncwebrl.api.store import Job
    from asyncwebrl.common.config import parse_config, redacted
    from asyncwebrl.rollout.config import RolloutConfig

    key = "sk-local-judge-key-value"
    monkeypatch.setenv("ASYNCWEBRL_JUDGE_API_KEY", key)
    config = ApiConfig(run_dir=str(tmp_path), allow_no_token=True, weightsync_target="127.0.0.1:50065")
    launcher = LocalLauncher(config, store=types.SimpleNamespace(redis=None, prefix="t:"))
    spec = JobSpec.model_validate({"name": "judged", "judge": {
        "url": "http://127.0.0.1:9", "kind": "openai", "model": "m", "api_key_secret": "judge-api-key",
        "concurrency": 3, "timeout_s": 5, "retries": 1}})
    args = rollout_args(config, Job("judged-0a1b2c", spec, "pending", 0, 0), tmp_path / "model")
    env = launcher.env_for(Child("rollout", ["rollout", *args], tmp_path / "rollout.log"))
    assert env["ASYNCWEBRL_JUDGE_API_KEY"] == key
    assert not any(key in a for a in args)
    parsed = parse_config(RolloutConfig, args, environ=env)
    assert (parsed.judge_url, parsed.judge_concurrency, parsed.judge_retries, parsed.judge_api_key) == (
        "http://127.0.0.1:9", 3, 1, key)
    assert redacted(parsed)["judge_api_key"] == "***", "the key is masked where the config is logged"
