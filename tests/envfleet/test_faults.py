"""Faults against a real envfleet: Chromium killed mid-episode, idle leases, SIGTERM, the buffer full or down."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request

import grpc
import psutil
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.envfleet import scripted
from asyncwebrl.v1 import buffer_pb2_grpc, env_pb2, env_pb2_grpc
from tests.envfleet.conftest import TOKEN, click, get_blob, start_buffer, start_envfleet
from tests.helpers import wait_until


def _fleet(buffer, tmp_path, *extra: str):
    svc = start_envfleet(tmp_path, buffer, "--browsers", "2", "--contexts-per-browser", "1", *extra)
    ch = channel(svc.target, TOKEN)
    yield svc, env_pb2_grpc.EnvServiceStub(ch)
    ch.close()
    svc.stop()


@pytest.fixture
def fleet(buffer, tmp_path):
    yield from _fleet(buffer, tmp_path)


@pytest.fixture
def short_lease_fleet(buffer, tmp_path):
    """Leases idle for 2 s expire. Only for the test of that: on a loaded machine an Allocate can take
    longer than 2 s, and a session allocated just before it would expire under another test."""
    yield from _fleet(buffer, tmp_path, "--lease-timeout-s", "2")


def _wait(predicate, timeout=30.0):
    return wait_until(predicate, timeout, interval=0.1)


def test_chromium_killed_mid_episode(fleet):
    svc, stub = fleet
    victim = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    other = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=2), timeout=30)
    stats = stub.Stats(env_pb2.StatsRequest())
    assert stats.slots_free == 0
    assert all(b.pid > 0 and b.contexts == 1 for b in stats.browser)
    # Least-loaded placement puts the two sessions on different browsers; kill browser 0.
    pid = stats.browser[0].pid
    assert "--asyncwebrl-browser=" in " ".join(psutil.Process(pid).cmdline())
    os.kill(pid, signal.SIGKILL)

    outcomes = {}
    for name, a in (("victim", victim), ("other", other)):
        try:
            stub.Step(env_pb2.StepRequest(session_id=a.session_id, action=click(10, 10)), timeout=30)
            outcomes[name] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            outcomes[name] = exc.code()
            assert "environment fault" in exc.details()
    # Exactly one session was on the killed browser: it reports an environment fault (ABORTED),
    # the other goes on as if nothing happened.
    assert sorted(c.name for c in outcomes.values()) == ["ABORTED", "OK"]
    # The crashed browser is replaced and its slot comes back; the next Allocate works.
    after = _wait(lambda: (s := stub.Stats(env_pb2.StatsRequest())).browsers == 2 and s.slots_free == 1 and s)
    assert after.browser_restarts == 1 and after.env_faults == 1
    assert after.browser[0].pid != pid
    episode = scripted.run_episode(stub, "miniwob/click-test", 3)
    assert episode.reward == 1.0
    # The faulted session stays an environment fault; releasing it is harmless.
    faulted = victim if outcomes["victim"] == grpc.StatusCode.ABORTED else other
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(env_pb2.StepRequest(session_id=faulted.session_id, action=click(10, 10)), timeout=10)
    assert err.value.code() == grpc.StatusCode.ABORTED
    stub.Release(env_pb2.ReleaseRequest(session_id=faulted.session_id))
    survivor = other if faulted is victim else victim
    stub.Release(env_pb2.ReleaseRequest(session_id=survivor.session_id))


def test_idle_lease_expires_and_frees_its_slot(short_lease_fleet):
    _, stub = short_lease_fleet
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    b = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    # Keep b busy while a idles past its 2 s lease.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        stub.Step(env_pb2.StepRequest(session_id=b.session_id, action=click(10, 10)), timeout=10)
        time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(env_pb2.StepRequest(session_id=a.session_id, action=click(10, 10)), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in err.value.details()
    stats = stub.Stats(env_pb2.StatsRequest())
    assert stats.expired_leases == 1 and stats.sessions == 1 and stats.slots_free == 1
    stub.Release(env_pb2.ReleaseRequest(session_id=b.session_id))


def test_sigterm_drains_and_exits_cleanly(buffer, tmp_path):
    svc = start_envfleet(tmp_path, buffer, "--shutdown-grace-s", "5")
    stub = env_pb2_grpc.EnvServiceStub(channel(svc.target, TOKEN))
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    browser_pid = stub.Stats(env_pb2.StatsRequest()).browser[0].pid
    # A slow step is in flight when SIGTERM arrives: it finishes, then the process exits 0.
    future = stub.Step.future(
        env_pb2.StepRequest(session_id=a.session_id, action=env_pb2.Action(wait=env_pb2.Wait(ms=3000))), timeout=30
    )
    time.sleep(1.0)
    svc.proc.send_signal(signal.SIGTERM)
    # Draining: not ready for new work, and new calls are refused.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/readyz", timeout=5)
    assert err.value.code == 503
    with pytest.raises(grpc.RpcError):
        stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=5)
    assert future.result().observation.step_index == 1
    assert svc.proc.wait(30) == 0
    assert not psutil.pid_exists(browser_pid) or psutil.Process(browser_pid).status() == psutil.STATUS_ZOMBIE
    assert "stopped" in svc.logs()
    svc.stop()


def _scrape(svc) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/metrics", timeout=10).read().decode()


def _ready(svc) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/readyz", timeout=5).status == 200
    except urllib.error.HTTPError:
        return False


def test_blob_budget_is_backpressure_on_screenshots(redis_server, tmp_path):
    """The buffer answers RESOURCE_EXHAUSTED past its blob budget: envfleet waits (--blob-wait-s, counted),
    then the step fails RESOURCE_EXHAUSTED, and nothing is written past the budget."""
    prefix = "budget-envfleet:"
    r = redis_server.client()
    buffer = start_buffer(tmp_path, redis_server, "--blob-budget-bytes", str(10**9), prefix=prefix)
    svc = start_envfleet(tmp_path, buffer, "--browsers", "1", "--contexts-per-browser", "1", "--blob-wait-s", "1")
    ch, buffer_ch = channel(svc.target, TOKEN), channel(buffer.target, TOKEN)
    stub = env_pb2_grpc.EnvServiceStub(ch)
    try:
        lease = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1, job_id="jb",
                                                      include_elements=True), timeout=30)
        button = next(e for e in lease.observation.elements if e.tag == "button")
        ref = lease.observation.screenshot
        blob = get_blob(buffer_pb2_grpc.BufferServiceStub(buffer_ch), "jb", ref.sha256)
        assert blob is not None and len(blob.data) == ref.size_bytes, "screenshots land under the job's blobs"
        used = int(r.get(f"{prefix}blobs:bytes"))
        assert used == ref.size_bytes
        # The budget is spent (a buffer full of untrained groups): a new screenshot waits, then is refused.
        r.set(f"{prefix}blobs:budget", used)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            # Clicking the button ends the episode: the page, so the screenshot, changes.
            at = click(button.x + button.width / 2, button.y + button.height / 2)
            stub.Step(env_pb2.StepRequest(session_id=lease.session_id, action=at), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "budget" in err.value.details()
        assert time.monotonic() - started >= 0.9, "it waited for memory before refusing"
        metrics = _scrape(svc)
        assert 'asyncwebrl_envfleet_blob_backpressure_total{result="refused"} 1.0' in metrics
        waited = re.search(r'asyncwebrl_envfleet_blob_backpressure_total\{result="waited"\} (\S+)', metrics)
        assert waited and float(waited.group(1)) >= 2, "it retried with backoff while waiting"
        assert 'asyncwebrl_buffer_blob_puts_total{result="refused"}' in _scrape(buffer), "the buffer refused them"
        assert int(r.get(f"{prefix}blobs:bytes")) == used, "nothing was written past the budget"
        assert svc.proc.poll() is None and _ready(svc), "a full buffer is backpressure, not unreadiness"
    finally:
        ch.close()
        buffer_ch.close()
        svc.stop()
        buffer.stop()


def test_buffer_down_is_an_environment_fault_and_envfleet_stays_up(redis_server, tmp_path):
    """The buffer away: a step answers UNAVAILABLE (as Redis down did), envfleet stays up but unready,
    and is ready and stores screenshots again once the buffer is back on its address."""
    buffer = start_buffer(tmp_path, redis_server, prefix="down-envfleet:")
    svc = start_envfleet(tmp_path, buffer, "--browsers", "1", "--contexts-per-browser", "2",
                         "--buffer-timeout-s", "2")
    ch = channel(svc.target, TOKEN)
    stub = env_pb2_grpc.EnvServiceStub(ch)
    try:
        _wait(lambda: _ready(svc))
        lease = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1, job_id="jd"), timeout=30)
        buffer.proc.kill()
        buffer.proc.wait(10)
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(env_pb2.StepRequest(session_id=lease.session_id, action=env_pb2.Action(
                wait=env_pb2.Wait(ms=10))), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "buffer" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=2, job_id="jd"), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert svc.proc.poll() is None, "envfleet does not exit when the buffer is away"
        assert urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/healthz", timeout=5).status == 200
        assert not _ready(svc), "unready while the buffer is away"
        stats = stub.Stats(env_pb2.StatsRequest(), timeout=10)
        assert (stats.sessions, stats.slots_free) == (1, 1), "the session is still held; the failed Allocate's slot is back"
        # The buffer comes back on the same address: ready again, and the same session steps on.
        buffer._spawn(buffer.name, buffer._argv(), buffer._env)
        buffer.wait_ready()
        _wait(lambda: _ready(svc), timeout=60)
        r = stub.Step(env_pb2.StepRequest(session_id=lease.session_id, action=env_pb2.Action(
            wait=env_pb2.Wait(ms=10))), timeout=30)
        assert r.observation.screenshot.sha256
        assert svc.proc.poll() is None
    finally:
        ch.close()
        svc.stop()
        buffer.stop()


def test_a_token_the_buffer_does_not_share_is_a_clear_error(buffer, tmp_path):
    """Misconfiguration, not an environment fault: INTERNAL naming the token, no waiting, envfleet stays up."""
    svc = start_envfleet(tmp_path, buffer, "--browsers", "1", "--contexts-per-browser", "1",
                         env={"ASYNCWEBRL_AUTH_TOKEN": "not-the-buffers"})
    ch = channel(svc.target, "not-the-buffers")
    stub = env_pb2_grpc.EnvServiceStub(ch)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "UNAUTHENTICATED" in err.value.details() and "ASYNCWEBRL_AUTH_TOKEN" in err.value.details()
        assert stub.Stats(env_pb2.StatsRequest(), timeout=10).slots_free == 1, "the slot came back"
        assert svc.proc.poll() is None
        assert "PutBlobs to the buffer" in svc.logs()
    finally:
        ch.close()
        svc.stop()
