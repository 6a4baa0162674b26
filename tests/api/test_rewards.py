"""What GRPO sees of a task's reward: success by default, the raw reward on request, and the
job setting reaching the gateway's own config."""

from __future__ import annotations

import pathlib

import pytest

from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.api.jobargs import rollout_args
from asyncwebrl.api.store import Job
from asyncwebrl.common.config import parse_config
from asyncwebrl.common.rewards import REWARD_MODES, succeeded, trained_reward
from asyncwebrl.rollout.config import RolloutConfig
from asyncwebrl.trainer.algorithm import group_advantages


def test_success_is_one_or_zero_whatever_the_raw_reward():
    # MiniWoB's raw rewards: -1 wrong action, 0 timeout, up to 1 for success (time-scaled below 1).
    assert [trained_reward(r, "success") for r in (-1.0, 0.0, 0.37, 1.0)] == [0.0, 0.0, 1.0, 1.0]
    assert [trained_reward(r, "raw") for r in (-1.0, 0.0, 0.37)] == [-1.0, 0.0, 0.37]
    assert not succeeded(0.0) and succeeded(1e-3)
    with pytest.raises(ValueError, match="reward"):
        trained_reward(1.0, "shaped")


def test_a_group_of_failures_carries_no_signal_under_success():
    """Wrong clicks (-1) and step-limit failures (0), no success: under the raw reward the long
    failures get a positive advantage (the policy learns not to click); under success, none."""
    raw = [-1.0, -1.0, 0.0, 0.0, -1.0, 0.0, 0.0, -1.0]
    assert (group_advantages(raw)[[2, 3, 5, 6]] > 0.8).all()
    assert group_advantages([trained_reward(r, "success") for r in raw]).abs().max() == 0


@pytest.mark.parametrize("mode", REWARD_MODES)
def test_the_job_setting_reaches_the_gateway(mode, tmp_path: pathlib.Path):
    spec = JobSpec.model_validate({"name": "r", "algorithm": {"reward": mode}})
    assert JobSpec.model_validate({"name": "r"}).algorithm.reward == "success", "success by default"
    args = rollout_args(ApiConfig(run_dir=str(tmp_path), allow_no_token=True, weightsync_target="127.0.0.1:50065"), Job("r-0a1b2c", spec, "pending", 0, 0), tmp_path)
    assert parse_config(RolloutConfig, args, environ={}).reward == mode


def test_an_unknown_reward_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="reward"):
        JobSpec.model_validate({"name": "r", "algorithm": {"reward": "shaped"}})
    with pytest.raises(ValueError, match="reward: must be one of success, raw"):
        RolloutConfig(reward="shaped")
