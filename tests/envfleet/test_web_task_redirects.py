"""Server redirects in live-website tasks (AllocateRequest.web_task), in a real envfleet and Chromium.

The host policy must hold for every hop of a redirect chain, not only for the URL a navigation starts at:
Playwright's request routing sees the first URL of a redirect chain only, so a redirect off the task's
origins is a hole unless envfleet checks the hops itself. The sites are aiohttp servers on loopback under
names (shop.test, cdn.test, evil.test) that only --resolve-host-map lets Chromium reach there; each records
every request it gets, so "never fetched" is read from the disallowed site's own log.
"""

from __future__ import annotations


import grpc
import pytest
from aiohttp import web

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from tests.envfleet.conftest import TOKEN, click
from tests.envfleet.loopback_sites import LoopbackSites, start_web_envfleet
from tests.envfleet.test_envfleet import metric, release, step
from tests.envfleet.test_webgym_tasks import allocate, web_task

BLOCKED = "asyncwebrl_envfleet_blocked_requests_total"
UNREACHABLE = "asyncwebrl_envfleet_site_unreachable_total"


def _page(title: str, body: str = "") -> web.Response:
    html = (f"<!doctype html><html><head><title>{title}</title><style>body{{margin:0}}"
            "a,button{display:block;width:300px;height:100px;font-size:30px;margin:0;padding:0;border:0}"
            f"</style></head><body>{body}</body></html>")
    return web.Response(text=html, content_type="text/html")


class Sites(LoopbackSites):
    """shop.test (the start origin), cdn.test (a second origin, allowed when listed) and evil.test (never
    allowed)."""

    def routes(self) -> dict[str, list]:
        evil_loopback = f"http://127.0.0.1:{self.ports['evil']}/internal"  # evil.test's server, by address

        def to(url: str):
            async def handler(_):
                raise web.HTTPFound(url)
            return handler

        async def shop_index(_):
            return _page("Shop", '<a id="redir" href="/to-evil">redirect</a>'
                                 f'<button id="js" onclick="location = {self.url("cdn", "/to-evil")!r}">js</button>')

        async def shop_image(_):
            return _page("Pictures", '<img src="/to-evil" width="10" height="10">')

        async def item(_):
            return _page("Item")

        async def evil_page(_):
            return _page("Evil")

        return {
            "shop": [
                web.get("/", shop_index),
                web.get("/pictures", shop_image),
                web.get("/to-evil", to(self.url("evil", "/landing"))),
                web.get("/to-cdn", to(self.url("cdn", "/hop"))),
                web.get("/to-cdn-evil", to(self.url("cdn", "/to-evil"))),
                web.get("/to-internal", to(evil_loopback)),
                web.get("/to-metadata", to("http://169.254.169.254/latest/meta-data/")),
            ],
            "cdn": [
                web.get("/hop", to(self.url("cdn", "/item"))),
                web.get("/item", item),
                web.get("/to-evil", to(self.url("evil", "/from-cdn"))),
            ],
            "evil": [web.get("/{tail:.*}", evil_page)],
        }


@pytest.fixture(scope="module")
def sites():
    s = Sites()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def webfleet(buffer, sites, tmp_path_factory):
    svc = start_web_envfleet(buffer, tmp_path_factory.mktemp("envfleet-redirects"))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def wstub(webfleet):
    ch = channel(webfleet.target, TOKEN)
    yield env_pb2_grpc.EnvServiceStub(ch)
    ch.close()


def _slots_back(wstub) -> None:
    stats = wstub.Stats(env_pb2.StatsRequest(), timeout=30)
    assert stats.slots_free == stats.slots_total == 2 and stats.env_faults == 0


@pytest.mark.parametrize("path, reason", [
    ("/to-evil", "host_not_allowed"),          # allowed -> not allowed
    ("/to-cdn-evil", "host_not_allowed"),      # allowed -> allowed (cdn.test listed) -> not allowed
    ("/to-internal", "internal_address"),      # allowed -> http://127.0.0.1:<evil.test's port>/ (not mapped)
    ("/to-metadata", "internal_address"),      # allowed -> http://169.254.169.254/
])
def test_start_url_redirecting_off_the_allowed_origins_is_refused(wstub, webfleet, sites, path, reason):
    sites.clear()
    start = sites.url("shop", path)
    blocked_before = metric(webfleet, BLOCKED, reason=reason)
    refused_before = metric(webfleet, UNREACHABLE, kind="blocked")
    try:
        reply = allocate(wstub, web_task(start, sites.origin("cdn")))
    except grpc.RpcError as exc:
        err = exc
    else:
        release(wstub, reply.session_id)
        pytest.fail(f"Allocate began an episode on {reply.observation.url} (evil.test saw {sites.hits['evil']})")
    # As any start page that cannot be loaded: UNAVAILABLE naming the URL, never an episode.
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert err.details().startswith("site unreachable: ") and start in err.details()
    assert "ERR_BLOCKED_BY_CLIENT" in err.details()
    assert metric(webfleet, UNREACHABLE, kind="blocked") == refused_before + 1
    assert metric(webfleet, BLOCKED, reason=reason) == blocked_before + 1
    assert sites.hits["evil"] == []  # the disallowed hop never left the browser
    assert sites.hits["shop"] == [path]
    _slots_back(wstub)


def test_redirect_chain_within_allowed_origins_loads(wstub, webfleet, sites):
    sites.clear()
    blocked_before = metric(webfleet, BLOCKED)
    # shop.test/to-cdn -> cdn.test/hop -> cdn.test/item, cdn.test listed.
    reply = allocate(wstub, web_task(sites.url("shop", "/to-cdn"), sites.origin("cdn")))
    try:
        obs = reply.observation
        assert obs.url == sites.url("cdn", "/item") and obs.title == "Item"
        # The page is usable: a step on it works and finds no block.
        out = step(wstub, reply.session_id, env_pb2.Action(wait=env_pb2.Wait(ms=50)))
        assert out.observation.url == sites.url("cdn", "/item") and out.info.blocked_requests == 0
    finally:
        release(wstub, reply.session_id)
    assert sites.hits["shop"] == ["/to-cdn"] and sites.hits["cdn"][:2] == ["/hop", "/item"]
    assert metric(webfleet, BLOCKED) == blocked_before


def test_redirect_off_the_origins_after_load_is_blocked(wstub, webfleet, sites):
    """The agent leaves a loaded page by a link, by script and by navigate, each to an allowed URL that
    redirects to evil.test; and a subresource of an allowed page redirects there too."""
    sites.clear()
    blocked_before = metric(webfleet, BLOCKED, reason="host_not_allowed")
    reply = allocate(wstub, web_task(sites.url("shop"), sites.origin("cdn")))
    try:
        assert reply.observation.title == "Shop"
        # A link to shop.test/to-evil (302 to evil.test).
        out = step(wstub, reply.session_id, click(150, 50))
        assert not out.observation.url.startswith("http://evil.test"), out.observation.url
        assert out.info.blocked_requests == 1, out.info
        assert out.observation.title != "Evil"
        out = step(wstub, reply.session_id, env_pb2.Action(go_back=env_pb2.GoBack()))
        assert out.observation.url == sites.url("shop")
        # Script: location = cdn.test/to-evil (an allowed origin, 302 to evil.test).
        out = step(wstub, reply.session_id, click(150, 150))
        assert not out.observation.url.startswith("http://evil.test"), out.observation.url
        assert out.info.blocked_requests == 1, out.info
        # navigate to an allowed URL (the action's own check passes it) that redirects to evil.test.
        out = step(wstub, reply.session_id, env_pb2.Action(navigate=env_pb2.Navigate(url=sites.url("shop", "/to-evil"))))
        assert not out.info.blocked  # the URL asked for is allowed; its redirect is what is refused
        assert out.info.blocked_requests == 1 and "ERR_BLOCKED_BY_CLIENT" in out.info.error, out.info
        assert not out.observation.url.startswith("http://evil.test"), out.observation.url
        # A subresource: an <img> on shop.test whose URL redirects to evil.test.
        out = step(wstub, reply.session_id, env_pb2.Action(navigate=env_pb2.Navigate(url=sites.url("shop", "/pictures"))))
        assert out.observation.title == "Pictures" and out.info.blocked_requests == 1, out.info
    finally:
        release(wstub, reply.session_id)
    assert sites.hits["evil"] == []
    assert sites.hits["cdn"] == ["/to-evil"]
    assert metric(webfleet, BLOCKED, reason="host_not_allowed") == blocked_before + 4
    _slots_back(wstub)
