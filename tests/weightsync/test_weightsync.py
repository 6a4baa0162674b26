"""weightsync against three real engine processes and real Redis. Tests run in order: versions only grow."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import ServiceProcess
from asyncwebrl.common.weights import read_manifest
from asyncwebrl.v1 import weightsync_pb2, weightsync_pb2_grpc
from tests.helpers import wait_until
from tests.weightsync.conftest import (JOB, PREFIX, TOKEN, live_ids, make_version, model_info, pauses, publish,
                                       publish_error, sample, served, start_engine)


def ckpt(stack):
    return stack["root"] / "ckpt"


def test_publish_reaches_every_engine_and_changes_its_outputs(stack):
    engines = stack["engines"]
    wait_until(lambda: live_ids(stack) == {"engine-0", "engine-1", "engine-2"}, 30, "three engines registered")
    before = [sample(e) for e in engines]
    assert before[0] == before[1] == before[2]
    path = make_version(ckpt(stack), 1, stack["root"] / "base")
    reply = publish(stack, 1, checksum=read_manifest(path, verify=False).checksum)
    assert reply.version == 1 and len(reply.results) == 3
    assert all(r.ok and r.attempts == 1 for r in reply.results), reply
    assert reply.bytes == read_manifest(path, verify=False).total_bytes
    assert served(engines) == ["1", "1", "1"]
    after = [sample(e) for e in engines]
    assert after[0] == after[1] == after[2], "one version, one policy"
    assert after[0] != before[0], "the new weights are the ones serving"
    # Routable again once each heartbeat reports the published version (records lag by up to 0.2 s).
    wait_until(lambda: live_ids(stack) == {"engine-0", "engine-1", "engine-2"}, 10, "all three routable at v1")


def test_corrupt_checkpoints_are_refused_before_any_engine_is_paused(stack):
    engines = stack["engines"]
    paused = [pauses(e) for e in engines]
    good = make_version(ckpt(stack), 2, stack["root"] / "base")
    checksum = read_manifest(good, verify=False).checksum

    flipped = ckpt(stack) / "flipped"
    shutil.copytree(good, flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(data))
    err = publish_error(stack, 2, flipped)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "model.safetensors" in err.details(), err.details()

    missing = ckpt(stack) / "missing"
    shutil.copytree(good, missing)
    (missing / "config.json").unlink()
    err = publish_error(stack, 2, missing)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "config.json" in err.details(), err.details()

    for kwargs, field in (({"checksum": "0" * 64}, "manifest_checksum"), ({"checksum": "xyz"}, "manifest_checksum"),
                          ({"path": stack["root"].parent / "elsewhere"}, "path"), ({"path": "relative/dir"}, "path")):
        err = publish_error(stack, 2, **kwargs)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(field), err.details()
    err = publish_error(stack, 3, good)  # the manifest there says 2
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("version"), err.details()
    err = publish_error(stack, 2, job="bad job!")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("job_id"), err.details()

    assert [pauses(e) for e in engines] == paused, "no engine was paused"
    assert served(engines) == ["1", "1", "1"]
    assert publish(stack, 2, checksum=checksum).results and served(engines) == ["2", "2", "2"]


def test_an_older_version_is_refused(stack):
    make_version(ckpt(stack), 3, stack["root"] / "base")
    assert all(r.ok for r in publish(stack, 3).results)
    err = publish_error(stack, 2)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "older than the published version 3" in err.details()
    assert served(stack["engines"]) == ["3", "3", "3"]
    wait_until(lambda: all(e.weight_version == "3" for e in stack["stub"].Status(
        weightsync_pb2.StatusRequest(job_id=JOB)).endpoints), 10, "heartbeats report version 3")
    again = publish(stack, 3)  # the same version again: nothing to load
    assert list(again.results) == []


def test_racing_publishes_end_on_the_newer_version_never_a_mix(stack):
    for older, newer in ((4, 5), (6, 7)):
        for v in (older, newer):
            make_version(ckpt(stack), v, stack["root"] / "base")
        outcomes: dict[int, object] = {}

        def go(v: int, out: dict = outcomes) -> None:
            try:
                out[v] = publish(stack, v)
            except grpc.RpcError as exc:
                out[v] = exc

        threads = [threading.Thread(target=go, args=(v,)) for v in (older, newer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert isinstance(outcomes[newer], weightsync_pb2.PublishResponse), outcomes[newer]
        if isinstance(outcomes[older], grpc.RpcError):  # it lost the race: refused, not applied after the newer
            assert outcomes[older].code() == grpc.StatusCode.FAILED_PRECONDITION
        assert served(stack["engines"]) == [str(newer)] * 3
        status = stack["stub"].Status(weightsync_pb2.StatusRequest(job_id=JOB))
        assert status.published_version == newer


def test_an_engine_killed_mid_fanout_is_held_then_catches_up_before_it_is_routable(stack):
    engines = stack["engines"]
    victim = engines[2]
    path = make_version(ckpt(stack), 8, stack["root"] / "base")
    victim.proc.send_signal(signal.SIGSTOP)  # it will hang mid-load until it is killed
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("reply", publish(stack, 8)))
    t.start()
    wait_until(lambda: served(engines[:2]) == ["8", "8"], 60, "the healthy engines load version 8")
    assert t.is_alive(), "the fan-out is still waiting on the stopped engine"
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.stop()
    t.join(120)
    reply = result["reply"]
    by_id = {r.endpoint_id: r for r in reply.results}
    assert by_id["engine-0"].ok and by_id["engine-1"].ok
    assert not by_id["engine-2"].ok and by_id["engine-2"].attempts == 2 and by_id["engine-2"].error
    assert "engine-2" not in live_ids(stack)
    status = {e.endpoint_id: e for e in stack["stub"].Status(weightsync_pb2.StatusRequest(job_id=JOB)).endpoints}
    assert not status["engine-2"].routable and status["engine-2"].failures >= 1
    assert status["engine-0"].routable and status["engine-0"].weight_version == "8"

    # Restarted from the base model (version "0"): it registers, is caught up, and only then gets work.
    restarted = start_engine(stack, "engine-2")
    engines[2] = restarted
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = live_ids(stack)
        version = model_info(restarted)["weight_version"]
        seen.append((("engine-2" in live), version))
        if "engine-2" in live:
            break
        time.sleep(0.05)
    assert seen[-1][0], f"engine-2 never became routable: {seen[-5:]}"
    assert all(version == "8" for routable, version in seen if routable), seen
    assert served(engines) == ["8", "8", "8"]
    assert sample(engines[2]) == sample(engines[0])
    assert read_manifest(path, verify=False).version == 8


def test_status_and_metrics_report_the_sync(stack):
    status = stack["stub"].Status(weightsync_pb2.StatusRequest(job_id=JOB))
    assert status.published_version == 8 and status.published_path.endswith("v00000008")
    assert {e.endpoint_id for e in status.endpoints} == {"engine-0", "engine-1", "engine-2"}
    assert all(e.fresh and e.routable and e.weight_version == "8" and not e.held for e in status.endpoints)
    assert all(e.last_sync_seconds > 0 for e in status.endpoints)
    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{stack['ws'].http_port}/metrics", timeout=10).read().decode()
        return {line.split(" ")[0]: float(line.split(" ")[-1]) for line in text.splitlines()
                if line and line[0] != "#"}

    # The per-version gauge is refreshed by the reconciler, every 0.3 s here.
    wait_until(lambda: scrape().get(f'asyncwebrl_weightsync_endpoints{{job="{JOB}",version="8"}}') == 3, 10,
               "three endpoints counted at version 8")
    metric = scrape()
    assert metric[f'asyncwebrl_weightsync_published_version{{job="{JOB}"}}'] == 8
    assert not any(k.startswith(f'asyncwebrl_weightsync_endpoints{{job="{JOB}",version="7"') for k in metric)
    assert metric[f'asyncwebrl_weightsync_publish_seconds_count{{job="{JOB}"}}'] >= 7
    assert metric[f'asyncwebrl_weightsync_load_failures_total{{job="{JOB}"}}'] >= 1
    assert metric[f'asyncwebrl_weightsync_loads_total{{cause="catch_up",job="{JOB}",result="ok"}}'] >= 1
    assert metric[f'asyncwebrl_weightsync_bytes_loaded_total{{job="{JOB}"}}'] > 3 * 1_000_000
    assert metric[f'asyncwebrl_weightsync_publishes_total{{job="{JOB}",outcome="refused_old"}}'] >= 1
    assert metric[f'asyncwebrl_weightsync_publishes_total{{job="{JOB}",outcome="invalid"}}'] >= 1


def test_statically_listed_servers_are_registered_and_updated(stack):
    """The SGLang path: a server that does not register itself (the engine without a registry speaks
    the same HTTP API) is listed in --static-endpoints; weightsync heartbeats it and loads versions."""
    server = start_engine(stack, "sglang-like", register=False)
    job = "sgjob"
    ws = ServiceProcess("weightsync", [
        "--redis-url", stack["redis"].url, "--key-prefix", PREFIX, "--log-format", "text", "--registry-ttl-s", "2",
        "--reconcile-interval-s", "0.3", "--checkpoint-roots", str(stack["root"]), "--discovery", "static",
        "--static-endpoints", f"{job}=pod-a@{server.url}"], stack["env"], stack["logs"] / "weightsync-static.log")
    try:
        ws.wait_ready()
        stub = weightsync_pb2_grpc.WeightSyncServiceStub(channel(ws.target, TOKEN))

        def pod():
            found = [e for e in stub.Status(weightsync_pb2.StatusRequest(job_id=job)).endpoints
                     if e.endpoint_id == "pod-a" and e.fresh]
            return found[0] if found else None

        first = wait_until(pod, 30, "pod-a registered by weightsync")
        assert first.kind == "sglang" and first.weight_version == "0" and first.url == server.url
        reply = stub.Publish(weightsync_pb2.PublishRequest(job_id=job, version=8,
                                                           path=str(ckpt(stack) / "v00000008")), timeout=60)
        assert [(r.endpoint_id, r.ok) for r in reply.results] == [("pod-a", True)]
        assert model_info(server)["weight_version"] == "8"
        wait_until(lambda: pod().weight_version == "8" and pod().routable, 10, "pod-a's record shows version 8")
        server.proc.send_signal(signal.SIGSTOP)  # unhealthy: no more heartbeats, so it leaves the rotation
        wait_until(lambda: pod() is None, 15, "a silent server's record goes stale")
        server.proc.send_signal(signal.SIGCONT)
    finally:
        ws.stop()
        server.stop()


def test_bad_flags_help_and_auth(stack):
    run = [sys.executable, "-m", "asyncwebrl.weightsync"]
    out = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ASYNCWEBRL_CONCURRENCY" in out.stdout and "--static-endpoints" in out.stdout
    for args, field in ((["--concurrency", "0"], "concurrency"), (["--discovery", "dns"], "discovery"),
                        (["--discovery", "static", "--static-endpoints", "job=x@ftp://h"], "static_endpoints"),
                        (["--checkpoint-roots", "relative"], "checkpoint_roots")):
        out = subprocess.run([*run, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and field in out.stderr, (args, out.stderr[-500:])
    anonymous = weightsync_pb2_grpc.WeightSyncServiceStub(grpc.insecure_channel(stack["ws"].target))
    with pytest.raises(grpc.RpcError) as info:
        anonymous.Status(weightsync_pb2.StatusRequest(job_id=JOB), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with urllib.request.urlopen(f"http://127.0.0.1:{stack['ws'].http_port}/readyz", timeout=5) as resp:
        assert resp.status == 200


def test_sigterm_stops_cleanly(stack):
    assert stack["ws"].stop() == 0
    assert "Traceback" not in stack["ws"].logs()
