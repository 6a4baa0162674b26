"""An evaluation's summary: success and episode lengths over all episodes, of successes and
of failures, per difficulty and per task (the demo's table reads them)."""

from __future__ import annotations

import pytest

from asyncwebrl.api.evaluate import summarise
from asyncwebrl.v1 import buffer_pb2


def _episode(steps: int, success: bool, invalid: int = 0) -> buffer_pb2.EpisodeRecord:
    return buffer_pb2.EpisodeRecord(success=success, steps=[buffer_pb2.StepRecord(invalid_action=i < invalid)
                                                            for i in range(steps)])


def test_lengths_of_successes_and_failures_per_task():
    groups = [
        buffer_pb2.Group(task="miniwob/a", difficulty="easy", episodes=[_episode(2, True), _episode(6, False, 3)]),
        buffer_pb2.Group(task="miniwob/b", difficulty="easy", episodes=[_episode(3, True), _episode(3, True)]),
    ]
    s = summarise(groups)
    assert s["episodes"] == 4 and s["success"] == pytest.approx(0.75)
    assert s["mean_steps"] == pytest.approx(14 / 4)
    assert s["mean_steps_success"] == pytest.approx(8 / 3) and s["mean_steps_failure"] == pytest.approx(6)
    assert s["valid_actions"] == pytest.approx(11 / 14)
    a, b = s["by_task"]["miniwob/a"], s["by_task"]["miniwob/b"]
    assert a["success"] == 0.5 and a["mean_steps_failure"] == 6 and a["mean_steps_success"] == 2
    assert b["mean_steps_failure"] is None and b["success"] == 1.0
    assert s["by_difficulty"]["easy"]["episodes"] == 4


def test_a_task_sets_out_of_distribution_tasks_are_reported_apart():
    groups = [
        buffer_pb2.Group(task="taskset/web/test/t1", difficulty="easy", episodes=[_episode(2, True)]),
        buffer_pb2.Group(task="taskset/web/test_ood/t2", difficulty="hard", episodes=[_episode(4, False)]),
        buffer_pb2.Group(task="taskset/web/test_ood/a/b", difficulty="hard", episodes=[_episode(3, True)]),
    ]
    s = summarise(groups)
    assert s["by_split"]["test"]["success"] == 1.0 and s["by_split"]["test_ood"]["success"] == 0.5
    assert s["by_split"]["test_ood"]["episodes"] == 2
    assert "by_split" not in summarise([buffer_pb2.Group(task="miniwob/a", episodes=[_episode(1, True)])])
