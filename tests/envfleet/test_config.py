"""envfleet's configuration: no Redis settings; the buffer's address is required and checked."""

from __future__ import annotations

import dataclasses

import pytest

from asyncwebrl.common.config import parse_config
from asyncwebrl.common.service_config import GrpcConfig, ServiceConfig
from asyncwebrl.envfleet.config import EnvfleetConfig


def test_envfleet_has_no_redis_settings():
    assert issubclass(EnvfleetConfig, GrpcConfig) and not issubclass(EnvfleetConfig, ServiceConfig)
    names = {f.name for f in dataclasses.fields(EnvfleetConfig)}
    assert not names & {"redis_url", "redis_password", "key_prefix", "blob_ttl_s"}
    assert {"buffer_target", "buffer_timeout_s", "blob_wait_s", "auth_token"} <= names


def test_buffer_target_from_flag_or_environment(chromium_path):
    env = {"ASYNCWEBRL_CHROMIUM_PATH": chromium_path}
    c = parse_config(EnvfleetConfig, [], environ={**env, "ASYNCWEBRL_BUFFER_TARGET": "buffer:50062",
                                                  "ASYNCWEBRL_AUTH_TOKEN": "tok"})
    assert (c.buffer_target, c.auth_token, c.buffer_timeout_s) == ("buffer:50062", "tok", 5.0)
    c = parse_config(EnvfleetConfig, ["--buffer-target", "[::1]:7"], environ=env)
    assert c.buffer_target == "[::1]:7"


@pytest.mark.parametrize("args, message", [
    ([], "buffer_target: is required"),
    (["--buffer-target", "buffer"], "buffer_target: must be HOST:PORT"),
    (["--buffer-target", "buffer:0"], "buffer_target: must be HOST:PORT"),
    (["--buffer-target", "http://buffer:50062"], "buffer_target: must be HOST:PORT"),
    (["--buffer-target", "b:1", "--buffer-timeout-s", "0"], "buffer_timeout_s"),
    (["--buffer-target", "b:1", "--redis-url", "redis://r:6379/0"], "unrecognized arguments: --redis-url"),
    (["--buffer-target", "b:1", "--blob-ttl-s", "60"], "unrecognized arguments: --blob-ttl-s"),
    (["--buffer-target", "b:1", "--resolve-host-map", "shop.test"], "resolve_host_map"),
    (["--buffer-target", "b:1", "--resolve-host-map", "127.0.0.2=127.0.0.1"], "resolve_host_map"),
    (["--buffer-target", "b:1", "--chromium-extra-flags", "--host-resolver-rules=MAP * 127.0.0.1"],
     "chromium_extra_flags"),
])
def test_bad_or_redis_flags_exit_2(args, message, chromium_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(EnvfleetConfig, args, environ={"ASYNCWEBRL_CHROMIUM_PATH": chromium_path})
    assert exc.value.code == 2 and message in capsys.readouterr().err
