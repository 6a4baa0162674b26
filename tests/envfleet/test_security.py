"""The host policy in a real browser: a hostile page and a hostile agent reach nothing but the task."""

from __future__ import annotations

import http.server
import pathlib
import threading

import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.envfleet.security import HostPolicy, origin_of
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from asyncwebrl.common.localstack import free_port
from tests.envfleet.conftest import TOKEN, click, start_envfleet

TEMPLATE = pathlib.Path(__file__).parent / "probe_template.html"


class Canary:
    """An HTTP server standing in for a cluster-internal service: it counts every hit."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        canary = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                canary.hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"secret")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def hostile(redis_server, buffer, tmp_path_factory):
    canary = Canary()
    site = tmp_path_factory.mktemp("hostile")
    page = TEMPLATE.read_text().replace("REDIS_PORT", str(redis_server.port)).replace("CANARY_PORT", str(canary.port))
    (site / "probe.html").write_text(page)
    (site / "same-origin.txt").write_text("hello")
    svc = start_envfleet(site, buffer, "--task-sources", "static", "--static-task-dirs", str(site))
    stub = env_pb2_grpc.EnvServiceStub(channel(svc.target, TOKEN))
    yield stub, canary, f"static/{site.name}/probe"
    svc.stop()
    canary.server.shutdown()


def _step(stub, session_id, action):
    return stub.Step(env_pb2.StepRequest(session_id=session_id, action=action), timeout=30)


def test_hostile_page_is_contained(hostile, redis_server):
    stub, canary, task = hostile
    before = stub.Stats(env_pb2.StatsRequest()).blocked_requests
    a = stub.Allocate(env_pb2.AllocateRequest(task=task, seed=0, include_elements=True), timeout=30)
    els = {e.id: e for e in a.observation.elements}

    def centre(el):
        return click(el.x + el.width / 2, el.y + el.height / 2)

    try:
        clicked = _step(stub, a.session_id, centre(els["go"]))
        r = _step(stub, a.session_id, env_pb2.Action(wait=env_pb2.Wait(ms=1500)))
        # Redis port, metadata endpoint, another internal service, a foreign host: blocked.
        # The task's own origin: reached (the policy is not a blanket block).
        assert r.observation.title == "probe: blocked,blocked,blocked,blocked,reached"
        # The page awaited its 4 fetches before setting the title, so they are counted by now
        # (the WebSocket and the image may still be on their way).
        assert clicked.info.blocked_requests + r.info.blocked_requests >= 4

        r = _step(stub, a.session_id, centre(els["popup"]))
        r = _step(stub, a.session_id, centre(els["download"]))
        _step(stub, a.session_id, env_pb2.Action(wait=env_pb2.Wait(ms=500)))

        # The agent's own navigations to forbidden places are refused and counted.
        page_url = r.observation.url
        for url, reason in [
            ("file:///etc/passwd", "scheme"),
            ("chrome://settings", "scheme"),
            ("javascript:alert(1)", "scheme"),
            ("http://169.254.169.254/latest/meta-data/", "internal_address"),
            (f"http://127.0.0.1:{redis_server.port}/", "internal_address"),
            (f"http://127.0.0.1:{canary.port}/nav", "internal_address"),
            ("https://example.com/", "host_not_allowed"),
        ]:
            r = _step(stub, a.session_id, env_pb2.Action(navigate=env_pb2.Navigate(url=url)))
            assert r.info.blocked and r.info.blocked_reason == reason, (url, r.info)
            assert r.observation.url == page_url
    finally:
        stub.Release(env_pb2.ReleaseRequest(session_id=a.session_id))

    assert canary.hits == [], canary.hits
    stats = stub.Stats(env_pb2.StatsRequest())
    # 4 fetches + popup window + download + 7 navigations, at least (plus the WebSocket and image).
    assert stats.blocked_requests - before >= 13


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/page", None),
        ("ws://127.0.0.1:8000/socket", None),
        ("http://127.0.0.1:8001/", "internal_address"),
        ("http://10.0.0.5/", "internal_address"),
        ("http://[::1]:8000/", "internal_address"),
        ("http://169.254.169.254/", "internal_address"),
        ("http://metadata.google.internal/", "internal_address"),
        ("https://example.com/", "host_not_allowed"),
        ("file:///etc/passwd", "scheme"),
        ("chrome://version", "scheme"),
        ("ftp://127.0.0.1:8000/", "scheme"),
        ("http://127.0.0.1:99999/", "malformed"),
        ("data:text/html,hi", None),
    ],
)
def test_policy_rules(url, reason):
    policy = HostPolicy(["http://127.0.0.1:8000"])
    assert policy.violation(url) == reason


def test_policy_navigation_refuses_inert_schemes_and_normalises_origins():
    policy = HostPolicy(["http://Example.com"])
    assert policy.violation("data:text/html,hi", navigation=True) == "scheme"
    assert policy.violation("about:blank", navigation=True) == "scheme"
    assert policy.violation("http://example.com:80/x") is None
    assert origin_of("wss://a.b/c") == "https://a.b:443"
    with pytest.raises(ValueError, match="allowed_origins"):
        HostPolicy(["file:///tmp"])


def test_only_suspicious_urls_reach_python():
    """Allowed traffic skips the Python handler; everything else is routed to it and judged there."""
    pattern = HostPolicy(["http://127.0.0.1:8000", "https://shop.test"]).suspicious_pattern()
    for plain in ["http://127.0.0.1:8000/", "http://127.0.0.1:8000", "http://127.0.0.1:8000/a?b#c",
                  "ws://127.0.0.1:8000/ws", "https://shop.test/x", "https://shop.test:443/x", "wss://shop.test/"]:
        assert not pattern.search(plain), plain
    for routed in ["http://127.0.0.1:80001/", "http://127.0.0.1:8000@evil.test/", "https://127.0.0.1:8000/",
                   "http://shop.test/", "https://shop.test.evil/", "http://169.254.169.254/", "file:///etc/passwd",
                   "http://127.0.0.1/"]:
        assert pattern.search(routed), routed
