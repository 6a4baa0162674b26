"""The api's own settings that shape its jobs: weightsync is required with a launcher (the one
publisher), and engines that listen beyond loopback (compose) must require a key."""

from __future__ import annotations

import pathlib

import pytest

from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobargs import engine_args, publish_args
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.api.store import Job


def test_a_launcher_needs_weightsync_and_publishes_through_it():
    with pytest.raises(ValueError, match="weightsync_target"):
        ApiConfig(launcher="local", run_dir="/tmp/r", allow_no_token=True)
    config = ApiConfig(launcher="local", run_dir="/tmp/r", allow_no_token=True, weightsync_target="ws:50065")
    assert publish_args(config) == ["--publish", "weightsync", "--weightsync-target", "ws:50065"]
    ApiConfig(launcher="none", allow_no_token=True)  # an api that launches nothing publishes nothing


def test_engines_beyond_loopback_require_a_key():
    base = {"launcher": "local", "run_dir": "/tmp/r", "allow_no_token": True, "weightsync_target": "ws:50065"}
    with pytest.raises(ValueError, match="engine_api_key"):
        ApiConfig(**base, engine_host="0.0.0.0")
    with pytest.raises(ValueError, match="engine_host"):
        ApiConfig(**base, engine_host="api.internal")
    config = ApiConfig(**base, engine_host="0.0.0.0", engine_api_key="k" * 32)
    job = Job("e-0a1b2c", JobSpec.model_validate({"name": "e", "model": {"path": "tiny/qwen2_5_vl"}}), "pending", 0, 0)
    args = engine_args(config, job, pathlib.Path("/m/tiny"), pathlib.Path("/r/ckpt"), 31000, "engine-0")
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert "k" * 32 not in " ".join(args)  # the key goes by environment, never on a command line
    assert ApiConfig(**base).engine_host == "127.0.0.1"
