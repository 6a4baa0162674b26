"""The gateway's --split keeps training and evaluation on disjoint task instances,
by the same rule envfleet's built-in sites use."""

from __future__ import annotations

import random

import pytest

from asyncwebrl.envfleet.sites.splits import split_of
from asyncwebrl.rollout.config import RolloutConfig
from asyncwebrl.common.tasks import split_seed


def test_seeds_land_in_their_split_and_stay_in_range():
    rng = random.Random(7)
    drawn = [rng.randrange(1 << 31) for _ in range(5000)] + [0, 10, (1 << 31) - 1, (1 << 31) - 8]
    for seed in drawn:
        train, test = split_seed(seed, "train"), split_seed(seed, "test")
        assert split_of(False, train) == "train" and split_of(False, test) == "test"
        assert 0 <= train < 1 << 31 and 0 <= test < 1 << 31
        assert split_seed(seed, "any") == seed
    # The test split still has many instances to draw from.
    assert len({split_seed(s, "test") for s in drawn}) > 4000


def test_a_bad_split_names_the_field():
    with pytest.raises(ValueError, match="^split: must be any, train or test"):
        RolloutConfig(split="validation")


def test_replicas_draw_their_own_task_instances_and_a_fixed_seed_its_own_sequence():
    """Pods of one gateway Deployment share --seed and differ by --seed-salt (their name): without it
    every replica would start the same task instances in the same order."""
    from asyncwebrl.rollout.service import task_rng

    def draws(**kw) -> list[int]:
        rng = task_rng(RolloutConfig(seed=3, **kw))
        return [rng.randrange(1 << 31) for _ in range(50)]

    plain = random.Random(3)  # no salt: exactly --seed's sequence, which evaluations rely on
    assert draws() == [plain.randrange(1 << 31) for _ in range(50)]
    assert draws(seed_salt="job-gw-7d9f-a") == draws(seed_salt="job-gw-7d9f-a")
    a, b = draws(seed_salt="job-gw-7d9f-a"), draws(seed_salt="job-gw-7d9f-b")
    assert len(set(a) & set(b)) == 0 and len(set(a) & set(draws())) == 0
    with pytest.raises(ValueError, match="seed_salt"):
        RolloutConfig(seed_salt="x" * 300)
