"""EnvService against the real service process, real Chromium, and a real buffer on real Redis (screenshots)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.envfleet import scripted
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from tests.envfleet.conftest import click, code_of, get_blob


def step(stub, session_id, action, **kw):
    return stub.Step(env_pb2.StepRequest(session_id=session_id, action=action), timeout=30, **kw)


def release(stub, session_id):
    return stub.Release(env_pb2.ReleaseRequest(session_id=session_id), timeout=30)


def metric(envfleet, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{envfleet.http_port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# ---------------------------------------------------------------- scripted agent


@pytest.mark.parametrize("task", scripted.SOLVABLE)
@pytest.mark.parametrize("seed", [0, 7])
def test_scripted_agent_solves_task(stub, redis_server, task, seed):
    episode = scripted.run_episode(stub, task, seed)
    assert episode.done, episode
    assert episode.reward == 1.0, episode
    assert episode.instruction
    # Every observation's screenshot is in Redis under its own sha256, as the buffer stored it.
    r = redis_server.client()
    for sha in episode.screenshots:
        data = r.hget(f"asyncwebrl:job:default:blob:{sha}", "data")
        assert data is not None and hashlib.sha256(data).hexdigest() == sha


def test_same_seed_same_task_instance(stub):
    first = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-button", seed=42), timeout=30)
    second = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-button", seed=42), timeout=30)
    third = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-button", seed=43), timeout=30)
    try:
        assert first.observation.instruction == second.observation.instruction
        assert first.observation.screenshot.sha256 == second.observation.screenshot.sha256
        assert (third.observation.instruction, third.observation.screenshot.sha256) != (
            first.observation.instruction,
            first.observation.screenshot.sha256,
        )
    finally:
        for a in (first, second, third):
            release(stub, a.session_id)


def test_wrong_click_fails_task(stub):
    """A wrong button gives the page's negative reward: a task failure, not a fault."""
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-button", seed=3, include_elements=True), timeout=30)
    try:
        target = re.findall(r'"([^"]*)"', a.observation.instruction)[0]
        wrong = next(e for e in a.observation.elements if e.tag == "button" and e.text != target)
        r = step(stub, a.session_id, click(wrong.x + wrong.width / 2, wrong.y + wrong.height / 2))
        assert r.done and r.reward == -1.0
        # The episode is over: another step is refused, not run.
        assert code_of(step, stub, a.session_id, click(10, 10)) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        release(stub, a.session_id)


def test_miniwob_timer_is_off(stub):
    """MiniWoB's 10 s episode timer would end the episode with -1; it is switched off."""
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    try:
        # click-test sets EPISODE_MAX_TIME to 10 s itself; waiting past it must not end the episode.
        r = None
        for _ in range(2):
            r = step(stub, a.session_id, env_pb2.Action(wait=env_pb2.Wait(ms=6000)))
        assert not r.done and r.reward == 0.0
    finally:
        release(stub, a.session_id)


# ---------------------------------------------------------------- observations and actions


def test_list_tasks_covers_miniwob_and_paginates(stub):
    everything = stub.ListTasks(env_pb2.ListTasksRequest(source="miniwob"), timeout=10)
    names = {t.name for t in everything.tasks}
    assert len(names) >= 128
    assert {"miniwob/click-test", "miniwob/login-user", "miniwob/flight.AA"} <= names
    seen, token = [], ""
    while True:
        page = stub.ListTasks(env_pb2.ListTasksRequest(source="miniwob", page_size=50, page_token=token), timeout=10)
        seen += [t.name for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == [t.name for t in everything.tasks]
    assert code_of(stub.ListTasks, env_pb2.ListTasksRequest(page_token="garbage")) == grpc.StatusCode.INVALID_ARGUMENT


def test_every_miniwob_page_allocates(stub):
    """Every task page of the miniwob wheel loads, seeds, and gives an instruction and a screenshot."""
    names = [t.name for t in stub.ListTasks(env_pb2.ListTasksRequest(source="miniwob"), timeout=10).tasks]
    failures = {}

    def one(name):
        a = stub.Allocate(env_pb2.AllocateRequest(task=name, seed=5), timeout=60)
        try:
            if not a.observation.instruction or a.observation.screenshot.size_bytes <= 0:
                return name, "empty instruction or screenshot"
        finally:
            release(stub, a.session_id)
        return name, None

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for name, problem in pool.map(lambda n: _retry_busy(one, n), names):
            if problem:
                failures[name] = problem
    assert not failures, failures


def _retry_busy(fn, *args):
    """Another test module's sessions may hold slots for a moment."""
    for _ in range(50):
        try:
            return fn(*args)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            import time

            time.sleep(0.2)
    raise AssertionError("slots never freed")


def test_actions_in_a_real_page(stub):
    a = stub.Allocate(
        env_pb2.AllocateRequest(task="static/pages/counter", seed=0, include_elements=True,
                                viewport=env_pb2.Viewport(width=640, height=480)),
        timeout=30,
    )
    try:
        assert a.observation.instruction == "Press the button three times."
        assert a.observation.screenshot.width == 640 and a.observation.screenshot.height == 480
        btn = next(e for e in a.observation.elements if e.id == "inc")
        cx, cy = btn.x + btn.width / 2, btn.y + btn.height / 2
        # Pixels and normalised 0-1000 coordinates reach the same button.
        r1 = step(stub, a.session_id, click(cx, cy))
        assert not r1.done and r1.info.page_changed and r1.observation.step_index == 1
        r2 = step(stub, a.session_id, click(cx * 1000 / 640, cy * 1000 / 480, pixels=False))
        assert not r2.done
        # Scrolling changes the page; then a key press reaches the page.
        r3 = step(stub, a.session_id, env_pb2.Action(scroll=env_pb2.Scroll(direction=env_pb2.SCROLL_DIRECTION_DOWN)))
        assert r3.info.page_changed
        r4 = step(stub, a.session_id, env_pb2.Action(press=env_pb2.Press(key="x")))
        assert r4.observation.title == "x pressed"
        r5 = step(stub, a.session_id, env_pb2.Action(scroll=env_pb2.Scroll(direction=env_pb2.SCROLL_DIRECTION_UP)))
        assert r5.observation.screenshot.sha256 != r3.observation.screenshot.sha256
        r6 = step(stub, a.session_id, click(cx, cy))
        assert r6.done and r6.reward == 1.0 and r6.observation.step_index == 6
    finally:
        release(stub, a.session_id)


def test_type_clear_enter_navigation_and_back(stub):
    a = stub.Allocate(env_pb2.AllocateRequest(task="static/pages/form", seed=0, include_elements=True), timeout=30)
    try:
        field = next(e for e in a.observation.elements if e.id == "field")
        at = env_pb2.Point(x=field.x + 5, y=field.y + field.height / 2)
        r = step(
            stub, a.session_id,
            env_pb2.Action(coordinates=env_pb2.COORDINATE_SPACE_PIXELS,
                           type=env_pb2.TypeText(text="hello world", at=at, clear=True, enter=True)),
        )
        assert r.observation.title == "submitted:hello world"
        link = next(e for e in a.observation.elements if e.id == "next")
        r = step(stub, a.session_id, click(link.x + 2, link.y + link.height / 2))
        assert r.observation.url.endswith("/next.html") and r.observation.title == "Next"
        r = step(stub, a.session_id, env_pb2.Action(go_back=env_pb2.GoBack()))
        assert "/form.html" in r.observation.url
        origin = r.observation.url.split("/form.html")[0]
        r = step(stub, a.session_id, env_pb2.Action(navigate=env_pb2.Navigate(url=origin + "/next.html")))
        assert r.observation.title == "Next" and not r.info.blocked
        r = step(stub, a.session_id, env_pb2.Action(answer=env_pb2.Answer(text="forty-two")))
        assert r.done and r.info.answer == "forty-two"
    finally:
        release(stub, a.session_id)


def test_png_screenshots(stub, buffer_stub):
    a = stub.Allocate(
        env_pb2.AllocateRequest(task="miniwob/click-test", seed=1,
                                screenshot=env_pb2.ScreenshotOptions(format=env_pb2.IMAGE_FORMAT_PNG)),
        timeout=30,
    )
    try:
        ref = a.observation.screenshot
        assert ref.mime == "image/png"
        blob = get_blob(buffer_stub, "default", ref.sha256)
        assert blob.data[:8] == b"\x89PNG\r\n\x1a\n" and len(blob.data) == ref.size_bytes
    finally:
        release(stub, a.session_id)


def test_screenshots_are_stored_through_the_buffer(envfleet, stub, buffer_stub):
    """envfleet has no Redis: each observation's screenshot is put into the buffer (PutBlobs) under the
    session's job, and reads back through the buffer's GetBlobs with the sha256, size and image the
    observation names."""
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=3, job_id="envjob"), timeout=30)
    try:
        r = step(stub, a.session_id, env_pb2.Action(wait=env_pb2.Wait(ms=10)))
        for ref in (a.observation.screenshot, r.observation.screenshot):
            blob = get_blob(buffer_stub, "envjob", ref.sha256)
            assert blob is not None, "the screenshot is in the buffer's blob store"
            assert hashlib.sha256(blob.data).hexdigest() == ref.sha256 and len(blob.data) == ref.size_bytes
            assert (blob.mime, blob.width, blob.height) == (ref.mime, ref.width, ref.height) == (
                "image/jpeg", a.viewport.width, a.viewport.height)
            assert blob.data[:3] == b"\xff\xd8\xff"
        # Stored under the session's job only: another job does not see it.
        assert get_blob(buffer_stub, "not-envjob", a.observation.screenshot.sha256) is None
    finally:
        release(stub, a.session_id)
    ready = urllib.request.urlopen(f"http://127.0.0.1:{envfleet.http_port}/readyz", timeout=10)
    assert ready.status == 200, "ready: browsers up and the buffer answering"


# ---------------------------------------------------------------- bad input


@pytest.fixture
def session(stub):
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    yield a.session_id
    release(stub, a.session_id)


@pytest.mark.parametrize(
    ("action", "field"),
    [
        (env_pb2.Action(), "action"),
        (click(1200, 10, pixels=False), "action.click.at.x"),
        (click(10, -1, pixels=False), "action.click.at.y"),
        (click(160, 10, pixels=True), "action.click.at.x"),
        (click(float("nan"), 10), "action.click.at.x"),
        (env_pb2.Action(click=env_pb2.Click()), "action.click.at"),
        (env_pb2.Action(type=env_pb2.TypeText(text="x" * 5000)), "action.type.text"),
        (env_pb2.Action(type=env_pb2.TypeText(text="a\x00b")), "action.type.text"),
        (env_pb2.Action(press=env_pb2.Press(key="Hyper+q")), "action.press.key"),
        (env_pb2.Action(press=env_pb2.Press(key="NotAKey")), "action.press.key"),
        (env_pb2.Action(scroll=env_pb2.Scroll()), "action.scroll.direction"),
        (env_pb2.Action(scroll=env_pb2.Scroll(direction=2, amount=-5)), "action.scroll.amount"),
        (env_pb2.Action(wait=env_pb2.Wait(ms=999_999)), "action.wait.ms"),
        (env_pb2.Action(navigate=env_pb2.Navigate(url="")), "action.navigate.url"),
        (env_pb2.Action(coordinates=7, click=env_pb2.Click(at=env_pb2.Point(x=1, y=1))), "action.coordinates"),
    ],
)
def test_bad_actions_are_invalid_argument(stub, session, action, field):
    with pytest.raises(grpc.RpcError) as err:
        step(stub, session, action)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()
    # The session survives a bad action.
    assert not step(stub, session, click(10, 10)).done


def test_bad_requests(stub):
    unknown = "0" * 32
    assert code_of(step, stub, unknown, click(1, 1)) == grpc.StatusCode.NOT_FOUND
    assert code_of(step, stub, "not-an-id", click(1, 1)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.Step, env_pb2.StepRequest(session_id=unknown)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.Allocate, env_pb2.AllocateRequest(task="miniwob/no-such-task")) == grpc.StatusCode.NOT_FOUND
    bad_viewport = env_pb2.AllocateRequest(task="miniwob/click-test", viewport=env_pb2.Viewport(width=10**6, height=10))
    with pytest.raises(grpc.RpcError) as err:
        stub.Allocate(bad_viewport)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "viewport.width" in err.value.details()
    bad_quality = env_pb2.AllocateRequest(task="miniwob/click-test", screenshot=env_pb2.ScreenshotOptions(quality=101))
    assert code_of(stub.Allocate, bad_quality) == grpc.StatusCode.INVALID_ARGUMENT
    bad_job = env_pb2.AllocateRequest(task="miniwob/click-test", job_id="../../etc")
    assert code_of(stub.Allocate, bad_job) == grpc.StatusCode.INVALID_ARGUMENT
    assert release(stub, unknown).released is False


def test_released_session_is_not_found(stub):
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    assert release(stub, a.session_id).released
    with pytest.raises(grpc.RpcError) as err:
        step(stub, a.session_id, click(10, 10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "released" in err.value.details()


def test_full_fleet_answers_resource_exhausted_at_once(stub):
    stats = stub.Stats(env_pb2.StatsRequest())
    held = []
    try:
        for _ in range(stats.slots_free):
            held.append(stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30))
        assert stub.Stats(env_pb2.StatsRequest()).slots_free == 0
        with pytest.raises(grpc.RpcError) as err:
            stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=2)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for a in held:
            release(stub, a.session_id)
    assert stub.Stats(env_pb2.StatsRequest()).slots_free == stats.slots_free


# ---------------------------------------------------------------- service plumbing


def test_auth_health_reflection_and_metrics(envfleet, stub):
    anonymous = env_pb2_grpc.EnvServiceStub(channel(envfleet.target))
    assert code_of(anonymous.Stats, env_pb2.StatsRequest()) == grpc.StatusCode.UNAUTHENTICATED
    wrong = env_pb2_grpc.EnvServiceStub(channel(envfleet.target, "wrong-token"))
    assert code_of(wrong.Stats, env_pb2.StatsRequest()) == grpc.StatusCode.UNAUTHENTICATED
    # Health needs no token.
    health = health_pb2_grpc.HealthStub(channel(envfleet.target))
    for service in ("", "asyncwebrl.v1.EnvService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Reflection lists the service.
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(channel(envfleet.target))
    replies = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "asyncwebrl.v1.EnvService" in names
    # HTTP health and the standard gRPC metrics, by status code.
    assert urllib.request.urlopen(f"http://127.0.0.1:{envfleet.http_port}/readyz", timeout=5).status == 200
    code_of(stub.Allocate, env_pb2.AllocateRequest(task="miniwob/nope"))
    rpc = {"grpc_service": "asyncwebrl.v1.EnvService", "grpc_type": "unary"}
    assert metric(envfleet, "grpc_server_handled_total", grpc_method="Allocate", grpc_code="NOT_FOUND", **rpc) >= 1
    assert metric(envfleet, "grpc_server_handled_total", grpc_method="Stats", grpc_code="UNAUTHENTICATED", **rpc) >= 2
    assert metric(envfleet, "grpc_server_handled_total", grpc_method="Step", grpc_code="OK", **rpc) >= 1
    assert metric(envfleet, "grpc_server_handling_seconds_count", grpc_method="Allocate", **rpc) >= 1
    assert metric(envfleet, "asyncwebrl_envfleet_steps_total", action="click") >= 1
    assert metric(envfleet, "asyncwebrl_envfleet_step_seconds_count") >= 1
    assert metric(envfleet, "asyncwebrl_envfleet_screenshot_bytes_total") > 0


def test_concurrent_steps_on_one_session_run_one_at_a_time(stub):
    """Two Steps racing on one session: the first ends the episode, the second is refused, not run."""
    a = stub.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1, include_elements=True), timeout=30)
    try:
        btn = next(e for e in a.observation.elements if e.id == "subbtn")
        target = click(btn.x + btn.width / 2, btn.y + btn.height / 2)
        futures = [stub.Step.future(env_pb2.StepRequest(session_id=a.session_id, action=target), timeout=30)
                   for _ in range(2)]
        outcomes = []
        for f in futures:
            try:
                r = f.result()
                outcomes.append(("ok", r.done, r.reward, r.observation.step_index))
            except grpc.RpcError as exc:
                outcomes.append((exc.code().name,))
        assert sorted(outcomes, key=str) == [("FAILED_PRECONDITION",), ("ok", True, 1.0, 1)], outcomes
    finally:
        release(stub, a.session_id)
