"""The scale simulator's FAKE envfleet (bench/sim_env.py), driven over real gRPC with a real buffer and
redis-server: episodes end as drawn, screenshots land in the buffer's blob store, status codes are
envfleet's (a crash is an environment fault to the gateway), and SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import io
import pathlib
import statistics
import sys
import urllib.request
import uuid

import grpc
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from asyncwebrl.common.grpcclient import aio_channel, channel
from asyncwebrl.common.localstack import ServiceProcess
from asyncwebrl.rollout.episode import ENV_FAULT_CODES
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc, env_pb2, env_pb2_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

from sim_common import ScriptProcess  # noqa: E402

TOKEN = "sim-token"
WAIT = env_pb2.Action(wait=env_pb2.Wait(ms=0))
FAST = ["--time-scale", "10000", "--log-format", "text"]  # 1 s of browser time runs in 0.1 ms


@pytest.fixture(scope="module")
def buffer(redis_server, tmp_path_factory):
    svc = ServiceProcess(
        "buffer",
        ["--redis-url", redis_server.url, "--key-prefix", f"s{uuid.uuid4().hex[:6]}:", "--log-format", "text"],
        {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
        tmp_path_factory.mktemp("sim-buffer") / "buffer.log",
    )
    svc.wait_ready()
    yield svc
    svc.stop()


@pytest.fixture
def start_sim(buffer, tmp_path):
    """Start the fake with extra flags; every one started must exit 0 on SIGTERM."""
    started: list[ScriptProcess] = []

    def start(*args: str) -> ScriptProcess:
        svc = ScriptProcess("sim_env", ["--buffer-target", buffer.target, "--auth-token", TOKEN, *FAST, *args], {},
                            tmp_path / f"sim-{len(started)}.log")
        started.append(svc)
        svc.wait_ready()
        return svc

    yield start
    for svc in started:
        rc = svc.stop()
        assert rc == 0, svc.logs()[-2000:]


def stub(svc: ScriptProcess) -> env_pb2_grpc.EnvServiceStub:
    return env_pb2_grpc.EnvServiceStub(channel(svc.target, TOKEN))


def code_of(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def metrics(svc: ScriptProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("sim_env_"):
                out[s.name + "".join(f"[{v}]" for v in s.labels.values())] = s.value
    return out


def test_episode_stores_real_screenshots_in_the_buffer(start_sim, buffer):
    sim = start_sim("--success-rate", "1", "--success-steps-mean", "3", "--screenshot-pool", "4",
                    "--tasks", "10", "--medium-fraction", "0.3", "--max-sessions", "2")
    env = stub(sim)
    # Auth is the services' own: no token, no answer.
    bare = env_pb2_grpc.EnvServiceStub(grpc.insecure_channel(sim.target))
    assert code_of(bare.Stats, env_pb2.StatsRequest()) == grpc.StatusCode.UNAUTHENTICATED

    tasks = env.ListTasks(env_pb2.ListTasksRequest(), timeout=10).tasks
    assert [t.name for t in tasks] == [f"sim/task-{i}" for i in range(10)]
    assert [t.difficulty for t in tasks].count("medium") == 3

    lease = env.Allocate(env_pb2.AllocateRequest(task="sim/task-0", seed=1, job_id="simjob", owner="gw-1"), timeout=10)
    shots, reward, done = [lease.observation.screenshot], 0.0, False
    assert lease.observation.instruction and lease.observation.step_index == 0
    while not done:
        reply = env.Step(env_pb2.StepRequest(session_id=lease.session_id, action=WAIT), timeout=10)
        shots.append(reply.observation.screenshot)
        done, reward = reply.done, reply.reward
        assert reply.observation.title and reply.info.action_type == "wait"
        assert len(shots) < 100
    assert reward == 1.0
    # A Step after done: the task ended (FAILED_PRECONDITION), as envfleet answers.
    assert code_of(env.Step, env_pb2.StepRequest(session_id=lease.session_id, action=WAIT)) == \
        grpc.StatusCode.FAILED_PRECONDITION

    blobs = buffer_pb2_grpc.BufferServiceStub(channel(buffer.target, TOKEN))
    answers = list(blobs.GetBlobs(buffer_pb2.GetBlobsRequest(job_id="simjob", sha256=[s.sha256 for s in shots]),
                                  timeout=10))
    for ref, answer in zip(shots, answers):
        assert answer.found, ref.sha256
        data = answer.blob.data
        assert len(data) == ref.size_bytes and ref.mime == "image/jpeg"
        assert (ref.width, ref.height) == (1280, 720) == Image.open(io.BytesIO(data)).size
        assert 30_000 < len(data) < 300_000  # a realistic web screenshot's size

    assert env.Renew(env_pb2.RenewRequest(owner="gw-1"), timeout=10).sessions == 1
    assert env.Release(env_pb2.ReleaseRequest(session_id=lease.session_id), timeout=10).released
    assert not env.Release(env_pb2.ReleaseRequest(session_id=lease.session_id), timeout=10).released
    assert code_of(env.Step, env_pb2.StepRequest(session_id=lease.session_id, action=WAIT)) == \
        grpc.StatusCode.NOT_FOUND

    # --max-sessions: full is RESOURCE_EXHAUSTED (the gateway waits on it), a Release frees a slot.
    allocate = env_pb2.AllocateRequest(task="sim/task-1")
    held = [env.Allocate(allocate, timeout=10).session_id for _ in range(2)]
    assert code_of(env.Allocate, allocate) == grpc.StatusCode.RESOURCE_EXHAUSTED
    stats = env.Stats(env_pb2.StatsRequest(), timeout=10)
    assert (stats.slots_total, stats.slots_free, stats.sessions) == (2, 0, 2)
    env.Release(env_pb2.ReleaseRequest(session_id=held[0]), timeout=10)
    held[0] = env.Allocate(allocate, timeout=10).session_id

    # Bad input: a clear status naming it, and the server goes on serving.
    bad = {
        grpc.StatusCode.NOT_FOUND: [(env.Allocate, env_pb2.AllocateRequest(task="")),
                                    (env.Allocate, env_pb2.AllocateRequest(task="sim/task-999")),
                                    (env.Step, env_pb2.StepRequest(session_id=uuid.uuid4().hex, action=WAIT))],
        grpc.StatusCode.INVALID_ARGUMENT: [
            (env.Step, env_pb2.StepRequest(session_id="nope", action=WAIT)),
            (env.Step, env_pb2.StepRequest(session_id=held[1])),
            (env.Release, env_pb2.ReleaseRequest(session_id="x" * 5000)),
            (env.Allocate, env_pb2.AllocateRequest(task="sim/task-1", job_id="bad job!")),
            (env.Allocate, env_pb2.AllocateRequest(task="sim/task-1", owner="\x00")),
            (env.Allocate, env_pb2.AllocateRequest(task="sim/task-1", viewport=env_pb2.Viewport(width=-1))),
            (env.Renew, env_pb2.RenewRequest(owner="o" * 200)),
            (env.ListTasks, env_pb2.ListTasksRequest(page_size=-1)),
            (env.ListTasks, env_pb2.ListTasksRequest(page_token="!!")),
        ],
    }
    for code, calls in bad.items():
        for call, request in calls:
            assert code_of(call, request) == code, request
    assert env.Step(env_pb2.StepRequest(session_id=held[1], action=WAIT), timeout=10).observation.screenshot.sha256
    page = env.ListTasks(env_pb2.ListTasksRequest(page_size=4), timeout=10)
    assert len(page.tasks) == 4 and page.next_page_token
    m = metrics(sim)
    assert m["sim_env_episodes_total[success]"] == 1
    assert m["sim_env_screenshots_stored_total"] == len(shots) + 3 + 1  # + 3 allocations, 1 step


async def _episodes(sim: ScriptProcess, n: int, concurrency: int = 24) -> list[tuple[int, float]]:
    """(steps, final reward) of ``n`` episodes run to done, ``concurrency`` at a time."""
    ch = aio_channel(sim.target, TOKEN)
    env = env_pb2_grpc.EnvServiceStub(ch)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[int, float]:
        async with gate:
            lease = await env.Allocate(env_pb2.AllocateRequest(task=f"sim/task-{i % 4}", seed=i, job_id="len"),
                                       timeout=10)
            steps = 0
            while True:
                reply = await env.Step(env_pb2.StepRequest(session_id=lease.session_id, action=WAIT), timeout=10)
                steps += 1
                if reply.done or steps >= 500:
                    break
            await env.Release(env_pb2.ReleaseRequest(session_id=lease.session_id), timeout=10)
            return steps, reply.reward

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await ch.close()


@pytest.mark.parametrize("rate, n, mean, tolerance", [("1", 200, 5.1, 1.0), ("0", 120, 12.5, 3.5)])
async def test_episode_lengths_follow_the_stated_means(start_sim, rate, n, mean, tolerance):
    # Default means (the paper's 5.1 and 12.5); tolerance ~3 standard errors of a geometric mean.
    sim = start_sim("--success-rate", rate, "--tasks", "4", "--screenshot-pool", "4", "--screenshot-width", "160",
                    "--screenshot-height", "120", "--max-sessions", "64", "--seed", "7")
    results = await _episodes(sim, n)
    lengths = [steps for steps, _ in results]
    assert abs(statistics.mean(lengths) - mean) < tolerance, statistics.mean(lengths)
    assert min(lengths) >= 1
    assert {reward for _, reward in results} == {1.0 if rate == "1" else 0.0}
    m = metrics(sim)
    assert m["sim_env_episodes_total[success]" if rate == "1" else "sim_env_episodes_total[failure]"] == n
    assert m["sim_env_steps_total"] == sum(lengths)
    assert m["sim_env_screenshots_stored_total"] == n + sum(lengths)


def test_a_crash_is_an_environment_fault_to_the_gateway(start_sim):
    sim = start_sim("--crash-rate", "1", "--screenshot-pool", "1", "--screenshot-width", "160",
                    "--screenshot-height", "120")
    env = stub(sim)
    lease = env.Allocate(env_pb2.AllocateRequest(task="sim/task-0"), timeout=10)
    step = env_pb2.StepRequest(session_id=lease.session_id, action=WAIT)
    code = code_of(env.Step, step)
    assert code in ENV_FAULT_CODES and code == grpc.StatusCode.ABORTED  # envfleet's EnvFault
    assert code_of(env.Step, step) == grpc.StatusCode.ABORTED  # the session is gone, and says why
    assert not env.Release(env_pb2.ReleaseRequest(session_id=lease.session_id), timeout=10).released
    stats = env.Stats(env_pb2.StatsRequest(), timeout=10)
    assert (stats.env_faults, stats.sessions, stats.steps_total) == (1, 0, 0)
    assert metrics(sim)["sim_env_crashes_total"] == 1
    assert sim.stop() == 0  # SIGTERM: a clean stop
