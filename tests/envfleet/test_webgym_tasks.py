"""Live-website (WebGym) tasks passed inline in Allocate (AllocateRequest.web_task), in a real envfleet and
Chromium. The "external" sites are aiohttp servers on loopback under names (shop.test, cdn.test, evil.test)
that only --resolve-host-map lets Chromium and envfleet resolve there."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from aiohttp import web
from PIL import Image

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import free_port
from asyncwebrl.envfleet import security
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from tests.envfleet.conftest import TOKEN, click, get_blob
from tests.envfleet.loopback_sites import LoopbackSites, start_web_envfleet
from tests.envfleet.test_envfleet import metric, release, step

JOB = "webgym-test"


def _page(title: str, colour: str, body: str = "") -> web.Response:
    html = (f"<!doctype html><html><head><title>{title}</title><style>body{{margin:0;background:{colour}}}"
            f"a{{display:block;width:300px;height:100px;font-size:40px;background:#fff}}</style></head>"
            f"<body>{body}</body></html>")
    return web.Response(text=html, content_type="text/html")


class Sites(LoopbackSites):
    """shop.test, cdn.test and evil.test; every hit is recorded."""

    def routes(self) -> dict[str, list]:
        cdn, evil = self.url("cdn", "/item"), self.url("evil", "/")

        async def shop_index(_):
            return _page("Shop", "rgb(255,0,0)",
                         f'<a id="cdn" href="{cdn}">cdn</a><a id="evil" href="{evil}">evil</a>')

        async def boom(_):
            return web.Response(status=503, text="down")

        async def item(_):
            return _page("Item", "rgb(0,255,0)")

        async def evil_index(_):
            return _page("Evil", "rgb(0,0,255)")

        return {
            "shop": [web.get("/", shop_index), web.get("/boom", boom)],
            "cdn": [web.get("/item", item)],
            "evil": [web.get("/", evil_index)],
        }


@pytest.fixture(scope="module")
def sites():
    s = Sites()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture(scope="module")
def webfleet(buffer, sites, tmp_path_factory):
    svc = start_web_envfleet(buffer, tmp_path_factory.mktemp("envfleet-webgym"), "closed")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def wstub(webfleet):
    ch = channel(webfleet.target, TOKEN)
    yield env_pb2_grpc.EnvServiceStub(ch)
    ch.close()


def web_task(start_url: str, *origins: str, task_id: str = "t1", instruction: str = "Find the item.") -> env_pb2.WebTask:
    return env_pb2.WebTask(task_id=task_id, instruction=instruction, start_url=start_url, allowed_origins=list(origins))


def allocate(stub, web: env_pb2.WebTask, **kw) -> env_pb2.AllocateResponse:
    return stub.Allocate(env_pb2.AllocateRequest(web_task=web, seed=1, job_id=JOB, **kw), timeout=60)


def colour_at(buffer_stub, shot: env_pb2.ScreenshotRef, x: int, y: int) -> tuple[int, int, int]:
    blob = get_blob(buffer_stub, JOB, shot.sha256)
    assert blob is not None
    return Image.open(io.BytesIO(blob.data)).convert("RGB").getpixel((x, y))


def near(rgb, target, tol=40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, target))


def test_start_url_in_a_fresh_context_and_allowed_origin(wstub, sites, buffer_stub):
    task = web_task(sites.url("shop"), f"http://cdn.test:{sites.ports['cdn']}")
    reply = allocate(wstub, task)
    try:
        obs = reply.observation
        assert reply.task.name == "webgym/t1" and reply.task.source == "webgym"
        assert obs.url == sites.url("shop") and obs.title == "Shop"
        assert obs.instruction == "Find the item."
        assert near(colour_at(buffer_stub, obs.screenshot, 600, 600), (255, 0, 0))  # the shop's red page
        # Not a listed task, never.
        names = [t.name for t in wstub.ListTasks(env_pb2.ListTasksRequest(), timeout=30).tasks]
        assert not any(n.startswith("webgym/") for n in names)
        # A link to the extra allowed origin works.
        out = step(wstub, reply.session_id, click(150, 50))
        assert out.observation.url == sites.url("cdn", "/item"), out.info
        assert out.observation.title == "Item" and not out.done and out.reward == 0
        assert near(colour_at(buffer_stub, out.observation.screenshot, 600, 600), (0, 255, 0))
        # The answer ends the episode; no reward from the page: the caller's judge decides.
        out = step(wstub, reply.session_id, env_pb2.Action(answer=env_pb2.Answer(text="the item")))
        assert out.done and out.reward == 0 and out.info.answer == "the item"
        assert "judge" in out.info.reward_reason
    finally:
        release(wstub, reply.session_id)
    # The explicit task name is accepted too.
    reply = allocate(wstub, task, task="webgym/t1")
    release(wstub, reply.session_id)


def test_origin_not_listed_is_blocked_and_counted(wstub, webfleet, sites):
    sites.hits["cdn"].clear()
    blocked_before = metric(webfleet, "asyncwebrl_envfleet_blocked_requests_total", reason="host_not_allowed")
    reply = allocate(wstub, web_task(sites.url("shop")))  # cdn.test is not allowed this time
    try:
        # The evil.test link: Chromium shows its error page (the request never left), as for any blocked load.
        out = step(wstub, reply.session_id, click(150, 150))
        assert not out.observation.url.startswith("http://evil.test"), out.observation.url
        assert out.info.blocked_requests == 1
        out = step(wstub, reply.session_id, env_pb2.Action(go_back=env_pb2.GoBack()))
        assert out.observation.url == sites.url("shop")
        out = step(wstub, reply.session_id, click(150, 50))  # cdn.test, allowed only when listed
        assert not out.observation.url.startswith("http://cdn.test") and out.info.blocked_requests == 1
        out = step(wstub, reply.session_id, env_pb2.Action(navigate=env_pb2.Navigate(url=sites.url("evil"))))
        assert out.info.blocked and out.info.blocked_reason == "host_not_allowed"
        # Mapped to loopback is not allowed by itself: a literal loopback address stays internal.
        out = step(wstub, reply.session_id, env_pb2.Action(
            navigate=env_pb2.Navigate(url=f"http://127.0.0.1:{sites.ports['shop']}/")))
        assert out.info.blocked and out.info.blocked_reason == "internal_address"
    finally:
        release(wstub, reply.session_id)
    assert sites.hits["evil"] == [] and sites.hits["cdn"] == []
    assert metric(webfleet, "asyncwebrl_envfleet_blocked_requests_total", reason="host_not_allowed") >= blocked_before + 3


@pytest.mark.parametrize("where, kind", [("closed", "refused"), ("unknown", "dns"), ("boom", "http_5xx")])
def test_unreachable_site_is_unavailable_not_an_episode(wstub, webfleet, sites, closed_port, where, kind):
    url = {"closed": f"http://closed.test:{closed_port}/", "unknown": "http://no-such-site.test/",
           "boom": sites.url("shop", "/boom")}[where]
    before = metric(webfleet, "asyncwebrl_envfleet_site_unreachable_total", kind=kind)
    with pytest.raises(grpc.RpcError) as err:
        allocate(wstub, web_task(url))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # The gateway tells it from an envfleet that is away (which it waits for) by its start (SITE_UNREACHABLE).
    assert err.value.details().startswith("site unreachable: ") and url in err.value.details()
    assert metric(webfleet, "asyncwebrl_envfleet_site_unreachable_total", kind=kind) == before + 1
    # envfleet is healthy: every slot is free again and a good task runs.
    stats = wstub.Stats(env_pb2.StatsRequest(), timeout=30)
    assert stats.slots_free == stats.slots_total == 2 and stats.env_faults == 0
    reply = allocate(wstub, web_task(sites.url("shop")))
    release(wstub, reply.session_id)


@pytest.mark.parametrize("change, field", [
    ({"start_url": "ftp://shop.test/"}, "web_task.start_url"),
    ({"start_url": "http://user:pw@shop.test/"}, "web_task.start_url"),
    ({"start_url": "file:///etc/passwd"}, "web_task.start_url"),
    ({"start_url": "http://127.0.0.1:9/"}, "web_task.start_url"),
    ({"start_url": "http://169.254.169.254/latest/meta-data/"}, "web_task.start_url"),
    ({"start_url": "http://localhost:9/"}, "web_task.start_url"),
    ({"start_url": "http://[::ffff:127.0.0.1]:9/"}, "web_task.start_url"),
    ({"start_url": "http://2130706433:9/"}, "web_task.start_url"),  # 127.0.0.1 spelled as one number
    ({"start_url": "http://shop.test/" + "a" * 2100}, "web_task.start_url"),
    ({"start_url": ""}, "web_task.start_url"),
    ({"allowed_origins": [f"http://o{i}.test" for i in range(100)]}, "web_task.allowed_origins"),
    ({"allowed_origins": ["http://cdn.test", "ftp://cdn.test"]}, "web_task.allowed_origins[1]"),
    ({"allowed_origins": ["http://a:b@cdn.test"]}, "web_task.allowed_origins[0]"),
    ({"allowed_origins": ["http://cdn.test/path"]}, "web_task.allowed_origins[0]"),
    ({"allowed_origins": ["http://10.0.0.1"]}, "web_task.allowed_origins[0]"),
    ({"instruction": "x" * 10_000}, "web_task.instruction"),
    ({"instruction": "  "}, "web_task.instruction"),
    ({"task_id": ""}, "web_task.task_id"),
    ({"task_id": "a b"}, "web_task.task_id"),
    ({"task_id": "x" * 300}, "web_task.task_id"),
])
def test_bad_fields_are_invalid_argument_naming_the_field(wstub, sites, change, field):
    fields = {"task_id": "t1", "instruction": "Find it.", "start_url": sites.url("shop")} | change
    with pytest.raises(grpc.RpcError) as err:
        allocate(wstub, env_pb2.WebTask(**fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_task_name_must_match(wstub, sites):
    with pytest.raises(grpc.RpcError) as err:
        allocate(wstub, web_task(sites.url("shop")), task="miniwob/click-test")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("task:")


def test_host_map_is_checked():
    assert security.parse_host_map(["Shop.test=127.0.0.1"]) == {"shop.test": "127.0.0.1"}
    assert security.host_resolver_rules({"a.test": "127.0.0.1", "b.test": "::1"}) == \
        "MAP a.test 127.0.0.1,MAP b.test [::1]"
    for bad in ("shop.test", "127.0.0.1=127.0.0.1", "shop.test=nowhere", "=1.2.3.4", "a b=1.2.3.4"):
        with pytest.raises(ValueError):
            security.parse_host_map([bad])
    # Without the map, a name that is not mapped never gets loopback.
    assert security.check_web_url("http://shop.test/", origin_only=False, max_chars=100, host_map={}) is None
    assert security.check_web_url("http://localhost/", origin_only=False, max_chars=100, host_map={}) is not None
    with pytest.raises(ValueError):
        asyncio.run(security.resolve_public("localhost", 80, 5, {}))
    assert asyncio.run(security.resolve_public("shop.test", 80, 5, {"shop.test": "127.0.0.1"})) == ["127.0.0.1"]
