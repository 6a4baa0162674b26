"""The trainer's per-step metrics: computed once, sent to Prometheus and the JSONL log."""

from __future__ import annotations

import json
import pathlib
import statistics

from prometheus_client import Counter, Gauge, Histogram

from asyncwebrl.v1 import buffer_pb2

VERSION = Gauge("asyncwebrl_trainer_version", "Weight version last published.")
STEPS = Counter("asyncwebrl_trainer_steps_total", "Training steps done.")
GROUPS = Counter("asyncwebrl_trainer_groups_total", "Groups trained on.")
REJECTED = Counter("asyncwebrl_trainer_rejected_groups_total", "Groups the buffer rejected while gathering batches, "
                   "or the trainer dropped, by reason.", ["reason"])
LOSS = Gauge("asyncwebrl_trainer_loss", "Loss of the last step.")
GRAD_NORM = Gauge("asyncwebrl_trainer_grad_norm", "Gradient norm (before clipping) of the last step.")
CLIP_FRACTION = Gauge("asyncwebrl_trainer_clip_fraction", "Kept tokens where the PPO objective took its clipped "
                      "branch (no gradient), last step.")
DUAL_CLIP_FRACTION = Gauge("asyncwebrl_trainer_dual_clip_fraction", "Kept tokens held by the dual clip, last step.")
# Off-policy health: what warns of a collapse before success falls.
ESS = Gauge("asyncwebrl_trainer_behaviour_ess", "Effective sample size of the behaviour weights exp(prox - behav), "
            "as a fraction of tokens (1: on-policy), last step.")
BEHAV_GAP = Gauge("asyncwebrl_trainer_behaviour_logprob_gap", "Mean |proximal - rollout logprob| over tokens the "
                  "trainer's own version produced (engine/trainer mismatch), last step.")
ADV_MASS = Gauge("asyncwebrl_trainer_advantage_mass", "Sum of token advantages by sign, last step.", ["sign"])
ENTROPY = Gauge("asyncwebrl_trainer_entropy", "Mean policy entropy at response positions (nats), last step.")
INVALID_ACTIONS = Gauge("asyncwebrl_trainer_invalid_action_rate", "Steps of the last batch whose output did not "
                        "parse as an action.")
CAP_FRACTION = Gauge("asyncwebrl_trainer_behaviour_cap_fraction", "Tokens masked by the behaviour cap, last step.")
APPROX_KL = Gauge("asyncwebrl_trainer_approx_kl", "k3 KL estimate between the proximal and updated policy.")
STEP_KL = Gauge("asyncwebrl_trainer_step_kl", "KL per token between the policy before and after the last step, "
                "over its batch (only with --max-step-kl).")
BACKTRACKS = Counter("asyncwebrl_trainer_step_backtracks_total", "Steps undone by the trust region (--max-step-kl) "
                     "and taken again at half the learning rate.")
STEPS_SKIPPED = Counter("asyncwebrl_trainer_steps_skipped_total", "Steps the trust region undid at every learning "
                        "rate it tried (the weights stayed as they were).")
LR = Gauge("asyncwebrl_trainer_lr", "Learning rate of the last step.")
REWARD = Gauge("asyncwebrl_trainer_reward", "Mean episode reward of the last batch, by difficulty.", ["difficulty"])
SUCCESS = Gauge("asyncwebrl_trainer_success_rate", "Success rate of the last batch, by difficulty.", ["difficulty"])
EPISODE_LENGTH = Histogram("asyncwebrl_trainer_episode_length", "Steps of trained episodes, by outcome.", ["outcome"],
                           buckets=(1, 2, 3, 5, 8, 10, 15, 20, 30, 50))
TOKENS_PER_STEP = Histogram("asyncwebrl_trainer_tokens_per_step", "Output tokens of one trained step.",
                            buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 4096))
STALENESS = Histogram("asyncwebrl_trainer_staleness", "Trainer version minus the oldest token version of a group.",
                      buckets=(0, 1, 2, 3, 4, 6, 8, 16))
TRAIN_TOKENS_PER_S = Gauge("asyncwebrl_trainer_train_tokens_per_second", "Tokens (prompt + output, all epochs) "
                           "through forward and backward per second of compute, last step.")
TRAJECTORIES_PER_HOUR = Gauge("asyncwebrl_trainer_trajectories_per_hour", "Episodes trained per hour, last step.")
ENV_STEPS_PER_S = Gauge("asyncwebrl_trainer_env_steps_per_second", "Environment steps trained per second, last step.")
MICRO_BATCHES = Gauge("asyncwebrl_trainer_micro_batches", "Micro-batches of the last step (all ranks).")
PHASE_SECONDS = Counter("asyncwebrl_trainer_phase_seconds_total", "Wall time by phase.", ["phase"])
PUBLISH_FAILURES = Counter("asyncwebrl_trainer_publish_failures_total",
                           "Versions published through weightsync that an endpoint failed to load (or weightsync "
                           "did not answer).")

PHASES = ("wait", "proximal", "forward_backward", "optimizer", "checkpoint", "publish")


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def batch_metrics(groups: list[buffer_pb2.Group], version: int) -> dict:
    """What the groups of one batch say about the policy that produced them."""
    by_diff: dict[str, list[buffer_pb2.EpisodeRecord]] = {}
    staleness: dict[str, int] = {}
    wins, losses, tokens = [], [], []
    for g in groups:
        by_diff.setdefault(g.difficulty or "unknown", []).extend(g.episodes)
        oldest = min((v for e in g.episodes for s in e.steps for v in s.versions), default=version)
        key = str(max(0, version - oldest))
        staleness[key] = staleness.get(key, 0) + 1
        for e in g.episodes:
            (wins if e.success else losses).append(len(e.steps))
            tokens.extend(len(s.output_ids) for s in e.steps)
    episodes = [e for eps in by_diff.values() for e in eps]
    return {
        "groups": len(groups),
        "episodes": len(episodes),
        "env_steps": sum(len(e.steps) for e in episodes),
        "reward": _mean([e.reward for e in episodes]),
        "raw_reward": _mean([e.raw_reward for e in episodes]),
        "success": _mean([float(e.success) for e in episodes]),
        "reward_by_difficulty": {d: _mean([e.reward for e in eps]) for d, eps in sorted(by_diff.items())},
        "success_by_difficulty": {d: _mean([float(e.success) for e in eps]) for d, eps in sorted(by_diff.items())},
        "length_success": _mean(wins),
        "length_failure": _mean(losses),
        "lengths_success": wins,
        "lengths_failure": losses,
        "tokens_per_step": _mean(tokens),
        "invalid_action_rate": _mean([float(s.invalid_action) for e in episodes for s in e.steps]),
        "step_tokens": tokens,
        "staleness": staleness,
    }


def record(entry: dict) -> None:
    """Prometheus from one step's entry (the same dict the JSONL line holds)."""
    STEPS.inc()
    VERSION.set(entry["version"])
    GROUPS.inc(entry["groups"])
    for reason, n in entry["rejected"].items():
        REJECTED.labels(reason).inc(n)
    for name, gauge in (("loss", LOSS), ("grad_norm", GRAD_NORM), ("clip_fraction", CLIP_FRACTION),
                        ("cap_fraction", CAP_FRACTION), ("approx_kl", APPROX_KL), ("lr", LR),
                        ("train_tokens_per_s", TRAIN_TOKENS_PER_S), ("trajectories_per_hour", TRAJECTORIES_PER_HOUR),
                        ("env_steps_per_s", ENV_STEPS_PER_S), ("micro_batches", MICRO_BATCHES)):
        gauge.set(entry[name])
    for name, gauge in (("dual_clip_fraction", DUAL_CLIP_FRACTION), ("ess", ESS), ("behav_gap", BEHAV_GAP),
                        ("entropy", ENTROPY), ("invalid_action_rate", INVALID_ACTIONS)):
        if entry.get(name) is not None:
            gauge.set(entry[name])
    if entry.get("step_kl") is not None:
        STEP_KL.set(entry["step_kl"])
    BACKTRACKS.inc(entry.get("backtracks", 0))
    STEPS_SKIPPED.inc(int(entry.get("step_skipped", False)))
    ADV_MASS.labels("positive").set(entry.get("adv_pos_mass", 0.0))
    ADV_MASS.labels("negative").set(entry.get("adv_neg_mass", 0.0))
    for d, v in entry["reward_by_difficulty"].items():
        REWARD.labels(d).set(v)
    for d, v in entry["success_by_difficulty"].items():
        SUCCESS.labels(d).set(v)
    for n in entry.pop("lengths_success"):
        EPISODE_LENGTH.labels("success").observe(n)
    for n in entry.pop("lengths_failure"):
        EPISODE_LENGTH.labels("failure").observe(n)
    for n in entry.pop("step_tokens"):
        TOKENS_PER_STEP.observe(n)
    for s, n in entry["staleness"].items():
        for _ in range(n):
            STALENESS.observe(int(s))
    for phase in PHASES:
        PHASE_SECONDS.labels(phase).inc(entry["seconds"][phase])


class JsonlLog:
    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
