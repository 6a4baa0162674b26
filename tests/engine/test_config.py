"""The engine's configuration builds on the shared process settings and keeps its own flags."""

from __future__ import annotations

import dataclasses

import pytest

from asyncwebrl.common.config import parse_config
from asyncwebrl.common.service_config import ProcessConfig, ServiceConfig
from asyncwebrl.engine.config import EngineConfig

# Every flag the engine had before it built on ProcessConfig: none lost, no gRPC or Redis ones gained.
FLAGS = {
    "host", "http_port", "api_key", "admin_api_key", "model_path", "model_roots", "device", "torch_threads", "dtype",
    "weight_version", "max_batch_size", "max_new_tokens_limit", "default_max_new_tokens", "max_prompt_tokens",
    "max_images", "max_body_bytes", "image_dir", "allow_image_urls", "url_timeout_s", "image_cache_mb", "log_level",
    "log_format", "shutdown_grace_s", "seed", "registry_redis_url", "registry_redis_password", "key_prefix", "job_id",
    "endpoint_id", "advertise_url", "heartbeat_s",
}


def test_the_engine_config_is_a_process_config_with_its_flags():
    assert issubclass(EngineConfig, ProcessConfig) and not issubclass(EngineConfig, ServiceConfig)
    assert {f.name for f in dataclasses.fields(EngineConfig)} == FLAGS
    c = parse_config(EngineConfig, [], environ={"ASYNCWEBRL_LOG_LEVEL": "debug"})
    assert c.http_port == 30000 and c.log_level == "DEBUG" and c.key_prefix == "asyncwebrl:"


@pytest.mark.parametrize("args, field", [(["--http-port", "70000"], "http_port"),
                                         (["--log-format", "xml"], "log_format"),
                                         (["--shutdown-grace-s", "601"], "shutdown_grace_s"),
                                         (["--dtype", "int8"], "dtype")])
def test_bad_values_exit_2_naming_the_field(args, field, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(EngineConfig, args, environ={})
    assert exc.value.code == 2 and field in capsys.readouterr().err
