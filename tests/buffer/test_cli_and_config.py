"""The buffer's command line, and the Redis durability settings every shipped configuration uses."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import yaml

from asyncwebrl.common.memory import keep_large_allocations

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


def test_redis_is_durable_in_every_configuration_we_ship(redis_server):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = " ".join(compose["services"]["redis"]["command"])
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction", "--requirepass"):
        assert setting in command, setting
    # The redis-server the tests and benchmarks start, asked directly.
    r = redis_server.client()
    assert r.config_get("appendonly")["appendonly"] == "yes"
    assert r.config_get("appendfsync")["appendfsync"] == "everysec"
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_malloc_tuning_applies_on_glibc():
    assert keep_large_allocations() is True
