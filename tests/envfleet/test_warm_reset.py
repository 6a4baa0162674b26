"""Opt-in warm reset: a released MiniWoB context serves the next episode of its task in place."""

from __future__ import annotations

import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.envfleet import scripted
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from tests.envfleet.conftest import TOKEN, start_envfleet


@pytest.fixture(scope="module")
def warm(buffer, tmp_path_factory):
    svc = start_envfleet(tmp_path_factory.mktemp("warm"), buffer, "--warm-reset",
                         "--contexts-per-browser", "2")
    yield env_pb2_grpc.EnvServiceStub(channel(svc.target, TOKEN))
    svc.stop()


def first_observation(stub, task, seed):
    a = stub.Allocate(env_pb2.AllocateRequest(task=task, seed=seed), timeout=30)
    stub.Release(env_pb2.ReleaseRequest(session_id=a.session_id))
    return a.observation


def test_warm_reset_reuses_and_matches_a_fresh_start(warm):
    fresh = first_observation(warm, "miniwob/click-button", 21)  # cold: a new context
    assert warm.Stats(env_pb2.StatsRequest()).warm_resets == 0
    again = first_observation(warm, "miniwob/click-button", 21)  # warm: the parked one, reset in place
    stats = warm.Stats(env_pb2.StatsRequest())
    assert stats.warm_resets == 1 and stats.browser[0].parked_contexts == 1
    # Same seed, same first observation: the in-page reset leaves nothing of the last episode on screen.
    assert again.instruction == fresh.instruction
    assert again.screenshot.sha256 == fresh.screenshot.sha256
    other = first_observation(warm, "miniwob/click-button", 22)
    assert other.screenshot.sha256 != fresh.screenshot.sha256


def test_warm_episodes_solve_and_other_tasks_start_cold(warm):
    before = warm.Stats(env_pb2.StatsRequest()).warm_resets
    for seed in range(3):
        assert scripted.run_episode(warm, "miniwob/enter-text", seed).reward == 1.0
    stats = warm.Stats(env_pb2.StatsRequest())
    assert stats.warm_resets - before == 2  # the first enter-text episode had nothing parked
    # Parked contexts are bounded by the browser's slots.
    assert stats.browser[0].parked_contexts <= 2


def test_a_page_left_elsewhere_is_not_reused(warm):
    a = warm.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    other_page = a.observation.url.replace("click-test", "click-button")
    warm.Step(env_pb2.StepRequest(session_id=a.session_id,
                                  action=env_pb2.Action(navigate=env_pb2.Navigate(url=other_page))), timeout=30)
    warm.Release(env_pb2.ReleaseRequest(session_id=a.session_id))
    before = warm.Stats(env_pb2.StatsRequest()).warm_resets
    b = warm.Allocate(env_pb2.AllocateRequest(task="miniwob/click-test", seed=1), timeout=30)
    warm.Release(env_pb2.ReleaseRequest(session_id=b.session_id))
    assert warm.Stats(env_pb2.StatsRequest()).warm_resets == before
