"""Task rules every service shares: difficulties, the train/test split by seed, and when a
group's rewards carry no GRPO signal. One place, so envfleet's sites, the gateway's seed
draws, the buffer's checks and the trainer's batches cannot disagree."""

from __future__ import annotations

DIFFICULTIES = ("easy", "medium", "hard")
# Default step limit of each difficulty (the gateway's --steps-* defaults; WebGym tasks; the sites' agents).
STEP_LIMITS = {"easy": 10, "medium": 20, "hard": 30}
SPLITS = ("train", "test", "ood")
# A seed is a test seed when it is a multiple of TEST_EVERY: train and test are disjoint by seed.
TEST_EVERY = 10
# Rewards this close count as equal: a group whose rewards all are carries no signal under GRPO.
ZERO_VARIANCE_TOL = 1e-9


def is_test_seed(seed: int) -> bool:
    return seed % TEST_EVERY == 0


def split_seed(seed: int, split: str) -> int:
    """Move a drawn seed into its split (``any`` keeps it), so training never sees an evaluation's instance."""
    if split == "test":
        return seed - seed % TEST_EVERY
    if split == "train" and is_test_seed(seed):
        return seed + 1
    return seed


def is_zero_variance(rewards: list[float]) -> bool:
    return len(rewards) < 2 or max(rewards) - min(rewards) <= ZERO_VARIANCE_TOL
