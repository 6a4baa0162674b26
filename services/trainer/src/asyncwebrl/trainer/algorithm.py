"""Multi-step GRPO with constant 1/k normalisation: the formulas, nothing else.

For a group of episodes of one task instance with rewards r_i:

- episode advantage ``A_i = (r_i - mean(r)) / (std(r) + eps)``, std unbiased;
- step advantage ``A_i / k`` (``constant``) or ``A_i / |tau_i|`` (``trajectory``),
  shared by every output token of the step; each step is one training row;
- decoupled PPO: ``ratio = exp(logp - logp_prox)`` clipped to [1 - eps, 1 + eps],
  dual clip c for negative advantages, times the behaviour weight
  ``w = exp(logp_prox - logp_behav)``; tokens with w above the cap are masked
  out (and counted); the loss is the sum over kept tokens divided by *all*
  response tokens of the global minibatch, so the only normaliser of a
  trajectory's weight is the one in its advantage.
"""

from __future__ import annotations

import dataclasses
import math

import torch

STEP_NORMS = ("constant", "trajectory")


def group_advantages(rewards: list[float] | torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Z-scored rewards within one group (unbiased std). A group with one episode,
    or with equal rewards, carries no signal: all zeros."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.numel() < 2:
        return torch.zeros_like(r)
    std = r.std(unbiased=True)
    if float(std) == 0.0:
        return torch.zeros_like(r)
    return (r - r.mean()) / (std + eps)


def step_advantage(episode_advantage: float, n_steps: int, step_norm: str = "constant", k: float = 10.0) -> float:
    """The advantage every output token of every step of the episode gets."""
    if step_norm == "constant":
        if k <= 0:
            raise ValueError("k: must be positive")
        return episode_advantage / k
    if step_norm == "trajectory":
        if n_steps <= 0:
            raise ValueError("n_steps: must be positive")
        return episode_advantage / n_steps
    raise ValueError(f"step_norm: must be one of {STEP_NORMS}")


@dataclasses.dataclass
class LossStats:
    tokens: int              # response tokens in the denominator
    kept: int                # tokens under the behaviour cap
    capped: int              # tokens masked for a behaviour weight above the cap
    clipped: int             # kept tokens where the objective took its clipped branch (no gradient)
    dual_clipped: int        # kept tokens held by the dual clip (no gradient)
    ratio_mean: float
    approx_kl: float         # mean of (ratio - 1) - log(ratio) over kept tokens (k3 estimator)

    @property
    def clip_fraction(self) -> float:
        return self.clipped / self.kept if self.kept else 0.0

    @property
    def cap_fraction(self) -> float:
        return self.capped / self.tokens if self.tokens else 0.0


def decoupled_ppo_loss(
    logp: torch.Tensor,
    logp_prox: torch.Tensor,
    logp_behav: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    dual_clip: float = 3.0,
    behav_cap: float = 5.0,
    total_tokens: int | None = None,
    logp_ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    """Token-level decoupled PPO loss over a (micro-)batch of rows.

    All tensors have the same shape (rows, tokens); ``mask`` is 1 on response
    tokens. ``total_tokens`` is the number of response tokens in the *global*
    minibatch (defaults to this batch's), so micro-batches sum to the mean.
    Only ``logp`` carries gradients.
    """
    if dual_clip <= 1.0:
        raise ValueError("dual_clip: must be > 1")
    mask = mask.to(logp.dtype)
    n = int(total_tokens if total_tokens is not None else mask.sum().item())
    if n <= 0:
        raise ValueError("total_tokens: no response tokens")
    with torch.no_grad():
        behav_weight = torch.exp(logp_prox - logp_behav)
        over_cap = (behav_weight > behav_cap) & (mask > 0)
        keep = mask * (~over_cap).to(mask.dtype)
    ratio = torch.exp(logp - logp_prox)
    surr1 = ratio * advantages
    surr2 = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    clipped_obj = torch.minimum(surr1, surr2)
    # Dual clip: for a negative advantage the objective is bounded below by c * A.
    dual_obj = torch.maximum(clipped_obj, dual_clip * advantages)
    objective = torch.where(advantages < 0, dual_obj, clipped_obj)
    per_token = -behav_weight * objective
    if logp_ref is not None and kl_coef > 0:
        log_r = logp_ref - logp
        per_token = per_token + kl_coef * (torch.exp(log_r) - log_r - 1.0)
    loss = (per_token * keep).sum() / n
    with torch.no_grad():
        kept = keep > 0
        r = ratio.detach()
        stats = LossStats(
            tokens=n,
            kept=int(kept.sum()),
            capped=int(over_cap.sum()),
            # min(r A, clip(r) A) takes clip(r) A only for A > 0 above the band and A < 0 below it;
            # outside the band on the other side the unclipped term is smaller and keeps its gradient.
            clipped=int((kept & (((advantages > 0) & (r > 1 + clip_eps))
                                 | ((advantages < 0) & (r < 1 - clip_eps)))).sum()),
            dual_clipped=int((kept & (advantages < 0) & (clipped_obj < dual_clip * advantages)).sum()),
            ratio_mean=float(r[kept].mean()) if kept.any() else 1.0,
            approx_kl=float(((r - 1) - torch.log(r))[kept].mean()) if kept.any() else 0.0,
        )
    return loss, stats


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
          min_ratio: float = 0.0) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_ratio * base_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError("schedule: must be cosine or constant")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
