from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from asyncwebrl.common.config import option, parse_config, redacted, require
from asyncwebrl.common.service_config import ServiceConfig


@dataclasses.dataclass(kw_only=True)
class DemoConfig(ServiceConfig):
    """Demo service."""

    workers: int = option(2, "Worker count.")
    ratio: float = option(0.5, "A ratio in [0, 1].")
    names: tuple[str, ...] = option(("a",), "Names, comma-separated.")
    fast: bool = option(False, "Go fast.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.workers >= 1, "workers", "must be at least 1")
        require(0 <= self.ratio <= 1, "ratio", "must be in [0, 1]")


def test_defaults_env_and_flags_in_order_of_precedence():
    assert parse_config(DemoConfig, [], {}).workers == 2
    env = {"ASYNCWEBRL_WORKERS": "5", "ASYNCWEBRL_FAST": "true", "ASYNCWEBRL_NAMES": "x, y"}
    cfg = parse_config(DemoConfig, [], env)
    assert (cfg.workers, cfg.fast, cfg.names) == (5, True, ("x", "y"))
    cfg = parse_config(DemoConfig, ["--workers", "7", "--no-fast"], env)
    assert (cfg.workers, cfg.fast) == (7, False)


@pytest.mark.parametrize(
    ("argv", "env", "field"),
    [
        (["--workers", "0"], {}, "workers"),
        ([], {"ASYNCWEBRL_RATIO": "2"}, "ratio"),
        ([], {"ASYNCWEBRL_WORKERS": "many"}, "ASYNCWEBRL_WORKERS"),
        ([], {"ASYNCWEBRL_FAST": "maybe"}, "ASYNCWEBRL_FAST"),
        (["--grpc-port", "70000"], {}, "grpc_port"),
        (["--redis-url", "http://x"], {}, "redis_url"),
        (["--log-level", "LOUD"], {}, "log_level"),
    ],
)
def test_bad_values_exit_2_naming_the_field(capsys, argv, env, field):
    with pytest.raises(SystemExit) as exc:
        parse_config(DemoConfig, argv, env)
    assert exc.value.code == 2
    assert field in capsys.readouterr().err


def test_secrets_are_redacted():
    cfg = parse_config(DemoConfig, [], {"ASYNCWEBRL_AUTH_TOKEN": "s3cret"})
    assert cfg.auth_token == "s3cret"
    assert redacted(cfg)["auth_token"] == "***"


def test_envfleet_help_prints_every_field():
    from asyncwebrl.envfleet.config import EnvfleetConfig

    out = subprocess.run(
        [sys.executable, "-m", "asyncwebrl.envfleet", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for f in dataclasses.fields(EnvfleetConfig):
        assert "--" + f.name.replace("_", "-") in out
        assert "ASYNCWEBRL_" + f.name.upper() in out
    assert "Chromium processes in this replica." in out


@pytest.mark.parametrize("module", ["trainer", "engine", "api"])
def test_torch_threads_is_bounded_and_applied(module, capsys):
    import importlib

    name = {"trainer": "TrainerConfig", "engine": "EngineConfig", "api": "ApiConfig"}[module]
    config_cls = getattr(importlib.import_module(f"asyncwebrl.{module}.config"), name)
    extra = ["--allow-no-token"] if module == "api" else []
    with pytest.raises(SystemExit) as exc:
        parse_config(config_cls, ["--torch-threads", "-1", *extra])
    assert exc.value.code == 2 and "torch_threads" in capsys.readouterr().err
    assert parse_config(config_cls, ["--torch-threads", "1", *extra]).torch_threads == 1


def test_set_torch_threads_sets_torch_and_zero_keeps_it():
    import torch

    from asyncwebrl.common.models.loading import set_torch_threads

    before = torch.get_num_threads()
    try:
        set_torch_threads(0)
        assert torch.get_num_threads() == before
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
