"""Network isolation proof: envfleet's browsers reach the task sites and nothing else.

Design: only Chromium runs in a network namespace (``--chromium-path`` is a wrapper that runs
``ip netns exec NS /usr/bin/chromium``; Playwright drives Chromium over a pipe, so no network edge is
needed for control). envfleet itself stays outside and keeps its own edges (its buffer, the test's gRPC
and /metrics), which the browsers then cannot use: stricter than the pod, where Chromium shares
envfleet's network. The namespace has a veth pair to the host and a default route through it, so every
target below IS routable from it (shown before the rules go in); nftables inside the namespace then
allows exactly one thing, TCP to the task site's port on the namespace's loopback, where a bridge owned
by this test forwards to envfleet's static task server (the pod's shared loopback, at the same origin, so
envfleet's in-browser allowlist sees what it sees in production). Everything else is rejected
(admin-prohibited, counted by a named nftables counter).

Targets, all listening on the host side of the veth (HOST_IP), reachable from the host:
a real redis-server (with a password), and TCP/HTTP stand-ins named api, weightsync and engine (plain
listeners on those roles' ports, NOT the services themselves), plus 169.254.169.254 (routed to the host,
nothing there). The hostile page tries each with fetch, XHR, img, iframe and WebSocket, and file:// and
chrome:// URLs; the agent tries navigations. The network layer is shown to hold on its own twice: plain
sockets from inside the namespace, and a bare Chromium (no Playwright, no allowlist) loading the same page.

Needs root, iproute2 with ``ip netns`` and nftables (scripts/bootstrap.sh installs it); a missing
capability FAILS the test with what is missing, never skips it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import free_port, wait_for_port
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from tests.envfleet.conftest import TOKEN, click, start_envfleet
from tests.helpers import wait_until

CHROMIUM = os.environ.get("ASYNCWEBRL_CHROMIUM_PATH", "/usr/bin/chromium")
CLONE_NEWNET = 0x40000000
NFT_TABLE = "asyncwebrl_browsers"

PROBE = """<!DOCTYPE html>
<html><head><title>probe: idle</title></head><body style="margin:0;padding:16px">
<button id="go" style="font-size:20px" onclick="go()">Go</button>
<script>
const TARGETS = TARGETS_JSON;
function settle(p, ms) { return Promise.race([p, new Promise(r => setTimeout(() => r('blocked'), ms))]); }
function viaFetch(u) { return fetch(u, {mode: 'no-cors', cache: 'no-store'}).then(() => 'reached', () => 'blocked'); }
function viaXhr(u) {
  return new Promise(r => { const x = new XMLHttpRequest(); x.open('GET', u);
    x.onload = () => r('reached'); x.onerror = () => r('blocked'); x.send(); });
}
function viaWs(u) {
  return new Promise(r => { let w; try { w = new WebSocket(u); } catch (e) { r('blocked'); return; }
    w.onopen = () => r('reached'); w.onerror = () => r('blocked'); w.onclose = () => r('blocked'); });
}
function viaElement(tag, u) {  // outcome not reported (an error page also "loads"); the listeners count hits
  return new Promise(r => { const e = document.createElement(tag); e.style.display = 'none';
    e.onload = e.onerror = () => r('done'); e.src = u; document.body.appendChild(e); });
}
async function go() {
  const reached = [], tries = [];
  for (const t of TARGETS) {
    tries.push(settle(viaFetch(t.http + '/fetch'), 5000).then(v => v === 'reached' && reached.push(t.name + ':fetch')));
    tries.push(settle(viaXhr(t.http + '/xhr'), 5000).then(v => v === 'reached' && reached.push(t.name + ':xhr')));
    tries.push(settle(viaWs(t.ws + '/ws'), 5000).then(v => v === 'reached' && reached.push(t.name + ':ws')));
    tries.push(settle(viaElement('img', t.http + '/img.png'), 5000));
    tries.push(settle(viaElement('iframe', t.http + '/frame'), 5000));
  }
  tries.push(settle(viaFetch('file:///etc/passwd'), 5000).then(v => v === 'reached' && reached.push('file:fetch')));
  tries.push(settle(viaElement('iframe', 'file:///etc/passwd'), 5000));
  tries.push(settle(viaElement('iframe', 'chrome://version'), 5000));
  tries.push(settle(viaFetch('same-origin.txt'), 5000).then(v => v === 'reached' && reached.push('same-origin')));
  await Promise.all(tries);
  document.title = 'probe: ' + reached.sort().join(',');
}
if (location.search.includes('auto=1')) go();
</script>
</body></html>
"""


def _sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Netns:
    """A network namespace with a veth pair to the host and a default route through it."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"awrl-{tag}"
        self.host_if, self.ns_if = f"awh{tag}", f"awn{tag}"
        net = secrets.randbelow(1 << 14) * 4  # a random /30 in 10.200.0.0/16 and up
        self.host_ip = f"10.{200 + (net >> 16)}.{(net >> 8) & 255}.{(net & 255) + 1}"
        self.ns_ip = f"10.{200 + (net >> 16)}.{(net >> 8) & 255}.{(net & 255) + 2}"

    def up(self) -> None:
        _sh("ip", "netns", "add", self.name)
        _sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _sh("ip", "link", "set", self.ns_if, "netns", self.name)
        _sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _sh("ip", "link", "set", self.host_if, "up")
        _sh("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _sh("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        _sh("ip", "-n", self.name, "link", "set", "lo", "up")
        _sh("ip", "-n", self.name, "route", "add", "default", "via", self.host_ip)

    def down(self) -> None:
        _sh("ip", "netns", "del", self.name, check=False)  # takes its veth end, and so the pair, with it
        _sh("ip", "link", "del", self.host_if, check=False)

    def exec(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return _sh("ip", "netns", "exec", self.name, *cmd, **kw)

    def wall(self) -> None:
        """Default deny: loopback TCP to the task sites' ports (a set, filled later) and replies; all else rejected."""
        self.exec("nft", "-f", "-", input=f"""
table inet {NFT_TABLE} {{
  set site_ports {{ type inet_service; }}
  counter rejected {{ }}
  chain output {{
    type filter hook output priority 0; policy drop;
    ct state established,related accept
    oif "lo" ip daddr 127.0.0.1 tcp dport @site_ports accept
    counter name rejected reject with icmpx admin-prohibited
  }}
}}""")

    def allow_site_port(self, port: int) -> None:
        self.exec("nft", "add", "element", "inet", NFT_TABLE, "site_ports", f"{{ {port} }}")

    def rejected(self) -> int:
        out = self.exec("nft", "list", "counter", "inet", NFT_TABLE, "rejected").stdout
        return int(re.search(r"packets (\d+)", out).group(1))

    def listen(self, port: int) -> socket.socket:
        """A TCP socket listening on 127.0.0.1:``port`` inside the namespace (setns in a throwaway thread)."""
        libc = ctypes.CDLL(None, use_errno=True)
        out: dict = {}

        def work() -> None:
            fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    out["error"] = OSError(ctypes.get_errno(), "setns")
                    return
            finally:
                os.close(fd)
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen(64)
            out["sock"] = s

        t = threading.Thread(target=work)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["sock"]


class Bridge:
    """The task site on the namespace's loopback: forwards to envfleet's static server on the host's loopback."""

    def __init__(self, listener: socket.socket, port: int) -> None:
        self.listener, self.port, self.connections = listener, port, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                up = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


class Listener:
    """A stand-in for an internal service (NOT the service): an HTTP server that counts every TCP connection."""

    def __init__(self, name: str, host: str) -> None:
        import http.server

        self.name, self.connections = name, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"secret")

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def get_request(self):
                conn, addr = super().get_request()
                outer.connections.append(addr)
                return conn, addr

        self.server = Server((host, free_port()), Handler)
        self.host, self.port = host, self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _require_capabilities() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, veth pairs and nftables need CAP_NET_ADMIN)")
    if shutil.which("ip") is None:
        missing.append("iproute2's ip")
    if shutil.which("nft") is None:
        missing.append("nft (apt-get install nftables; scripts/bootstrap.sh installs it)")
    if missing:
        pytest.fail("browser isolation cannot be proven here: missing " + ", ".join(missing))


@pytest.fixture
def netns():
    _require_capabilities()
    ns = Netns()
    try:
        ns.up()
    except AssertionError as exc:
        ns.down()
        pytest.fail(f"cannot build a network namespace with a veth pair here: {exc}")
    yield ns
    ns.down()


@pytest.fixture
def redis_on_host(netns, tmp_path):
    """A real redis-server with a password on the host side of the veth."""
    port, password = free_port(), secrets.token_hex(8)
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", netns.host_ip,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host=netns.host_ip, port=port, password=password)
    wait_until(lambda: _pings(client), 15, "redis-server on the veth address")
    yield port, client
    client.close()
    proc.terminate()
    proc.wait(10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


PLAIN_CONNECT = """
import json, socket, sys
out = {}
for name, host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close()
        out[name] = "connected"
    except OSError as e:
        out[name] = f"errno {e.errno}" if e.errno else type(e).__name__
print(json.dumps(out))
"""


def _blocked_metrics(http_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^asyncwebrl_envfleet_blocked_requests_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$', text, re.M)}


def test_browsers_reach_only_the_task_sites(netns, redis_on_host, buffer, tmp_path):
    redis_port, redis_client = redis_on_host
    stand_ins = [Listener(name, netns.host_ip) for name in ("api", "weightsync", "engine")]
    targets = [("redis", netns.host_ip, redis_port)] + [(s.name, s.host, s.port) for s in stand_ins]
    targets_plus_metadata = targets + [("metadata", "169.254.169.254", 80)]

    def redis_connections() -> int:
        return int(redis_client.info("stats")["total_connections_received"])

    # Positive control 1: every target answers from outside the namespace.
    assert redis_client.ping()
    for s in stand_ins:
        assert urllib.request.urlopen(f"http://{s.host}:{s.port}/", timeout=5).read() == b"secret"
    # Positive control 2: before the rules, every target is reachable from INSIDE the namespace too,
    # so what stops the browser below is the isolation, not an address or a loopback binding.
    before_rules = json.loads(netns.exec(sys.executable, "-c", PLAIN_CONNECT, json.dumps(targets)).stdout)
    assert before_rules == {name: "connected" for name, _, _ in targets}, before_rules
    for s in stand_ins:  # one connection from the host, one from inside: the listeners count what arrives
        assert [ip for ip, _ in s.connections] == [netns.host_ip, netns.ns_ip], (s.name, s.connections)
        s.connections.clear()

    netns.wall()
    # The network layer alone: plain sockets from inside are refused by the rules (EHOSTUNREACH, 113).
    after_rules = json.loads(netns.exec(sys.executable, "-c", PLAIN_CONNECT, json.dumps(targets_plus_metadata)).stdout)
    assert after_rules == {name: "errno 113" for name, _, _ in targets_plus_metadata}, after_rules

    # The hostile task site, served by envfleet's static source.
    site = tmp_path / "hostile"
    site.mkdir()
    page_targets = [{"name": n, "http": f"http://{h}:{p}", "ws": f"ws://{h}:{p}"} for n, h, p in targets_plus_metadata]
    (site / "probe.html").write_text(PROBE.replace("TARGETS_JSON", json.dumps(page_targets)))
    (site / "same-origin.txt").write_text("hello")
    wrapper = tmp_path / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns.name} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)

    svc = start_envfleet(tmp_path, buffer, "--browsers", "1", "--contexts-per-browser", "2",
                         "--task-sources", "static", "--static-task-dirs", str(site), "--chromium-path", str(wrapper))
    bridge = None
    try:
        # envfleet's Chromium really is in the namespace.
        env_proc = psutil.Process(svc.proc.pid)
        chromes = [p for p in env_proc.children(recursive=True) if "chrom" in os.path.basename(p.exe())]
        assert chromes
        ns_inode = os.stat(f"/var/run/netns/{netns.name}").st_ino
        assert {os.stat(f"/proc/{p.pid}/ns/net").st_ino for p in chromes} == {ns_inode}
        assert os.stat(f"/proc/{svc.proc.pid}/ns/net").st_ino != ns_inode

        # The static server's port (envfleet's listeners minus its gRPC and HTTP ports).
        conns = getattr(env_proc, "net_connections", env_proc.connections)(kind="tcp")
        site_ports = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"}
        site_ports -= {svc.grpc_port, svc.http_port}
        assert len(site_ports) == 1, site_ports
        (site_port,) = site_ports
        netns.allow_site_port(site_port)
        bridge = Bridge(netns.listen(site_port), site_port)

        redis_before = redis_connections()
        rejected_before = netns.rejected()

        # The network layer alone, with a browser: a bare Chromium (no Playwright, no allowlist) in the
        # namespace loads the same page; only its own origin is reached.
        bare = netns.exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'bare'}",
            "--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{site_port}/probe.html?auto=1",
            check=False)
        title = re.search(r"<title>(.*?)</title>", bare.stdout)
        assert title and title.group(1) == "probe: same-origin", (title and title.group(1), bare.stderr[-2000:])
        rejected_bare = netns.rejected() - rejected_before
        assert rejected_bare >= len(targets_plus_metadata) * 5, rejected_bare

        # envfleet's own browsers: the allowlist blocks, the network would too.
        stub = env_pb2_grpc.EnvServiceStub(channel(svc.target, TOKEN))
        metrics_before = _blocked_metrics(svc.http_port)
        a = stub.Allocate(env_pb2.AllocateRequest(task=f"static/{site.name}/probe", seed=0, include_elements=True),
                          timeout=60)
        assert a.observation.url.startswith(f"http://127.0.0.1:{site_port}/")
        go = next(e for e in a.observation.elements if e.id == "go")
        try:
            stub.Step(env_pb2.StepRequest(session_id=a.session_id,
                                          action=click(go.x + go.width / 2, go.y + go.height / 2)), timeout=30)

            def titled():
                r = stub.Step(env_pb2.StepRequest(session_id=a.session_id,
                                                  action=env_pb2.Action(wait=env_pb2.Wait(ms=300))), timeout=30)
                return r.observation.title if r.observation.title != "probe: idle" else None

            assert wait_until(titled, 30, "the probe page's verdict") == "probe: same-origin"
            page_url = a.observation.url
            agent_tries = [("file:///etc/passwd", "scheme"), ("chrome://version", "scheme")]
            agent_tries += [(f"http://{h}:{p}/nav", "internal_address") for _, h, p in targets_plus_metadata]
            for url, reason in agent_tries:
                r = stub.Step(env_pb2.StepRequest(session_id=a.session_id,
                                                  action=env_pb2.Action(navigate=env_pb2.Navigate(url=url))), timeout=30)
                assert r.info.blocked and r.info.blocked_reason == reason, (url, r.info)
                assert r.observation.url == page_url
        finally:
            stub.Release(env_pb2.ReleaseRequest(session_id=a.session_id))

        blocked = {k: v - metrics_before.get(k, 0.0) for k, v in _blocked_metrics(svc.http_port).items()}
        # fetch, XHR, img, iframe and WebSocket to each of 5 targets, then the agent's 5 navigations to them.
        assert blocked.get("internal_address", 0) >= 5 * len(targets_plus_metadata) + len(targets_plus_metadata), blocked
        assert blocked.get("scheme", 0) >= 2, blocked
        print("blocked by the allowlist:", blocked, "rejected by nftables (bare browser):", rejected_bare,
              "bridged connections:", bridge.connections)
    finally:
        if bridge is not None:
            bridge.close()
        svc.stop()

    # Nothing got through, by any path: not one TCP connection reached any target.
    assert bridge.connections >= 2  # the positive control: the allowed site WAS reached through the wall
    for s in stand_ins:
        assert s.connections == [], (s.name, s.connections)
        s.server.shutdown()
    assert redis_connections() == redis_before
