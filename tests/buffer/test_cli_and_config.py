"""The buffer's command line, and the Redis durability settings every shipped configuration uses."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import urllib.request

import yaml

from asyncwebrl.common.memory import keep_large_allocations
from tests.buffer.conftest import start_buffer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_help_lists_every_flag_with_its_variable():
    out = subprocess.run([sys.executable, "-m", "asyncwebrl.buffer", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag, env in (("--blob-budget-bytes", "ASYNCWEBRL_BLOB_BUDGET_BYTES"),
                      ("--claim-idle-s", "ASYNCWEBRL_CLAIM_IDLE_S"),
                      ("--max-staleness", "ASYNCWEBRL_MAX_STALENESS")):
        assert flag in out and env in out


def test_bad_configuration_exits_2_naming_the_field():
    for args, env, field in (
        (["--claim-idle-s", "0"], {}, "claim_idle_s"),
        ([], {"ASYNCWEBRL_MAX_DELIVERIES": "0"}, "max_deliveries"),
        (["--blob-budget-bytes", "lots"], {}, "blob-budget-bytes"),
    ):
        proc = subprocess.run([sys.executable, "-m", "asyncwebrl.buffer", *args], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", **env}, timeout=60)
        assert proc.returncode == 2 and field in proc.stderr, (field, proc.stderr)


def test_a_taken_http_port_exits_1_naming_it_instead_of_hanging(redis_server):
    """Seen in CI: the gRPC port bound, the HTTP one was taken, and the process hung with
    its gRPC port open (so it looked started) until SIGKILL."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "asyncwebrl.buffer", "--redis-url", redis_server.url, "--grpc-port", "0",
             "--http-port", str(port), "--log-format", "text"],
            capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
        )
    assert proc.returncode == 1 and f"http_port: cannot bind 127.0.0.1:{port}" in proc.stderr, proc.stderr


def test_a_service_that_loses_the_port_race_starts_again_on_new_ports(redis_server, tmp_path, monkeypatch):
    """Between choosing a free port and the child binding it, another process may take it."""
    from asyncwebrl.common import localstack

    real = localstack.free_ports
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        calls = []

        def racing(n):
            calls.append(n)
            ports = real(n)
            return [ports[0], taken] if len(calls) == 1 else ports

        monkeypatch.setattr(localstack, "free_ports", racing)
        svc = start_buffer(tmp_path, redis_server)
    try:
        assert len(calls) == 2 and svc.http_port != taken
        assert f"http_port: cannot bind 127.0.0.1:{taken}" in svc.logs()
        with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/readyz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        assert svc.stop() == 0, svc.logs()


def test_redis_is_durable_in_every_configuration_we_ship(redis_server):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert setting in command, setting
    # The password reaches redis-server on stdin (its config), never on its command line.
    assert "--requirepass" not in command and 'requirepass "$$pw"' in redis["entrypoint"][2]
    # The redis-server the tests and benchmarks start, asked directly.
    r = redis_server.client()
    assert r.config_get("appendonly")["appendonly"] == "yes"
    assert r.config_get("appendfsync")["appendfsync"] == "everysec"
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_malloc_tuning_applies_on_glibc():
    assert keep_large_allocations() is True
