"""The GRPO 1/k formulas against hand-computed values, one test per formula."""

from __future__ import annotations

import math

import pytest
import torch

from asyncwebrl.common.tasks import is_zero_variance
from asyncwebrl.trainer.algorithm import (
    decoupled_ppo_loss,
    group_advantages,
    lr_at,
    step_advantage,
)


def test_group_advantage_is_a_z_score_with_unbiased_std():
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.57735
    adv = group_advantages([1.0, 0.0, 0.0, 1.0])
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-5)
    assert torch.allclose(adv, torch.tensor([expected, -expected, -expected, expected], dtype=torch.float64))
    assert abs(float(adv.sum())) < 1e-12


def test_zero_variance_groups_carry_no_signal():
    assert torch.equal(group_advantages([1.0, 1.0, 1.0]), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(group_advantages([0.3]), torch.zeros(1, dtype=torch.float64))
    assert is_zero_variance([0.0, 0.0]) and is_zero_variance([1.0]) and not is_zero_variance([0.0, 1.0])


def test_step_advantage_constant_and_trajectory():
    assert step_advantage(0.8, n_steps=4, step_norm="constant", k=10) == pytest.approx(0.08)
    assert step_advantage(0.8, n_steps=4, step_norm="trajectory") == pytest.approx(0.2)
    for bad in ({"step_norm": "other"}, {"k": 0.0}):
        with pytest.raises(ValueError):
            step_advantage(1.0, 3, **{"step_norm": "constant", **bad})


def test_one_over_tau_weakens_a_long_failed_episode_and_one_over_k_does_not():
    """The paper's point: a failure of 12.5 steps next to a success of 5 steps.
    With 1/|tau| every token of the failure weighs 2.5x less than a success token;
    with 1/k both weigh alike, so long failures are pushed down as hard as short
    successes are pushed up."""
    a_success, a_failure = group_advantages([1.0, 0.0]).tolist()
    success_steps, failure_steps = 5, 12.5
    tau_s = step_advantage(a_success, success_steps, "trajectory")
    tau_f = step_advantage(a_failure, failure_steps, "trajectory")
    k_s = step_advantage(a_success, success_steps, "constant", 10)
    k_f = step_advantage(a_failure, failure_steps, "constant", 10)
    assert abs(tau_s) / abs(tau_f) == pytest.approx(2.5)
    assert abs(k_s) == pytest.approx(abs(k_f))
    # Summed over the episode's steps, 1/|tau| gives each episode the same total push,
    # 1/k pushes the long failure down 2.5x harder than 1/|tau| does.
    assert abs(tau_f * failure_steps) == pytest.approx(abs(tau_s * success_steps))
    assert abs(k_f * failure_steps) / abs(tau_f * failure_steps) == pytest.approx(failure_steps / 10)


def _loss(ratio: float, adv: float, behav_weight: float = 1.0, **kw):
    logp_prox = torch.tensor([[-1.0]])
    logp = (logp_prox + math.log(ratio)).requires_grad_(True)
    logp_behav = logp_prox - math.log(behav_weight)
    loss, stats = decoupled_ppo_loss(logp, logp_prox, logp_behav, torch.tensor([[adv]]), torch.ones(1, 1), **kw)
    return loss, stats, logp


@pytest.mark.parametrize(("ratio", "adv", "expected", "clipped"), [
    (1.1, 1.0, -1.1, 0),    # inside the trust region: -ratio * A
    (1.5, 1.0, -1.2, 1),    # positive advantage, ratio above 1 + eps: the clipped branch, 1.2
    (0.5, 1.0, -0.5, 0),    # positive advantage, ratio below: min keeps the unclipped (pessimistic) 0.5
    (0.5, -1.0, 0.8, 1),    # negative advantage, ratio below 1 - eps: the clipped branch, 0.8
    (1.5, -1.0, 1.5, 0),    # negative advantage, ratio above: min keeps the unclipped 1.5
    (5.0, -1.0, 3.0, 0),    # the dual clip bounds the negative side at c * |A| = 3
])
def test_clipped_and_dual_clipped_objective(ratio, adv, expected, clipped):
    loss, stats, logp = _loss(ratio, adv)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert stats.clipped == clipped
    assert stats.dual_clipped == (1 if ratio == 5.0 else 0)
    # What the counts mean: a token counted as clipped (either clip) is one with no gradient.
    loss.backward()
    assert (float(logp.grad) == 0.0) == bool(stats.clipped or stats.dual_clipped)


def test_behaviour_weight_scales_and_the_cap_masks():
    loss, stats, _ = _loss(1.0, 1.0, behav_weight=2.0)
    assert float(loss.detach()) == pytest.approx(-2.0) and stats.capped == 0
    loss, stats, _ = _loss(1.0, 1.0, behav_weight=10.0)
    assert float(loss.detach()) == 0.0 and stats.capped == 1 and stats.kept == 0 and stats.cap_fraction == 1.0


def test_the_mean_is_over_all_response_tokens_of_the_global_minibatch():
    logp_prox = torch.zeros(2, 3)
    logp = logp_prox.clone().requires_grad_(True)
    behav = torch.tensor([[0.0, 0.0, 0.0], [0.0, -math.log(10.0), 0.0]])  # one token over the cap
    adv = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])                  # 5 response tokens
    loss, stats = decoupled_ppo_loss(logp, logp_prox, behav, adv, mask)
    # Kept: 1 + 1 + 2 + 2 = 6, divided by all 5 response tokens (the capped one counts).
    assert float(loss.detach()) == pytest.approx(-6 / 5) and stats.tokens == 5 and stats.capped == 1
    # Two micro-batches with the global count sum to the same loss.
    halves = [decoupled_ppo_loss(logp[i:i + 1], logp_prox[i:i + 1], behav[i:i + 1], adv[i:i + 1], mask[i:i + 1],
                                 total_tokens=5)[0] for i in range(2)]
    assert float(sum(halves).detach()) == pytest.approx(float(loss.detach()))


def test_gradient_of_an_unclipped_token():
    # d/dlogp of -w * ratio * A / N = -w * ratio * A / N (ratio = exp(logp - logp_prox))
    loss, _, logp = _loss(1.1, 0.5, behav_weight=2.0)
    loss.backward()
    assert float(logp.grad) == pytest.approx(-2.0 * 1.1 * 0.5)
    # A clipped token carries no gradient.
    loss, _, logp = _loss(1.5, 1.0)
    loss.backward()
    assert float(logp.grad) == 0.0


def test_optional_kl_to_a_reference():
    logp = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5]])
    base, _ = decoupled_ppo_loss(logp, logp.detach(), logp.detach(), torch.zeros(1, 1), torch.ones(1, 1))
    with_kl, _ = decoupled_ppo_loss(logp, logp.detach(), logp.detach(), torch.zeros(1, 1), torch.ones(1, 1),
                                    logp_ref=ref, kl_coef=0.1)
    log_r = -0.5
    assert float(base.detach()) == 0.0 and float(with_kl.detach()) == pytest.approx(0.1 * (math.exp(log_r) - log_r - 1))


def test_learning_rate_schedules():
    assert lr_at(0, 1.0, warmup_steps=4, total_steps=20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, warmup_steps=4, total_steps=20) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)
    assert lr_at(20, 1.0, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(15, 1.0, 4, 20, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_at(5, 1.0, 0, 10, schedule="linear")
