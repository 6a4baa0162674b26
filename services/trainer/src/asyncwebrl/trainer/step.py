"""One training step on a batch of rows: proximal logprobs first, then PPO epochs
over minibatches of micro-batches, with gradient clipping and AdamW.

Under FSDP2 every rank holds the whole batch and takes every ``world``-th row
of each minibatch. Each rank must run the same number of forward and backward
passes (each one is a collective), so a rank with fewer micro-batches runs a
zero-weighted one. FSDP averages gradients over ranks, so the local loss is
scaled by ``world``: the gradient is that of the global token mean, exactly as
one process would compute it.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable

import numpy as np
import torch

from asyncwebrl.common.models.logprobs import Sample, output_logprobs, output_logprobs_and_entropy
from asyncwebrl.trainer.algorithm import decoupled_ppo_loss
from asyncwebrl.trainer.batching import Row, micro_batches
from asyncwebrl.trainer.dist import Dist

# refs -> (pixel_values, image_grid_thw) of the row's screenshots, in order.
ImageResolver = Callable[[list], tuple[np.ndarray, np.ndarray] | None]
OBJECTIVES = ("grpo", "sft")


@dataclasses.dataclass
class StepConfig:
    objective: str = "grpo"        # grpo: decoupled PPO on advantages; sft: likelihood of the outputs
    epochs: int = 1
    minibatches: int = 1
    token_budget: int = 16384
    clip_eps: float = 0.2
    dual_clip: float = 3.0
    behav_cap: float = 5.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    kl_coef: float = 0.0
    # Trust region (grpo): a step whose KL(proximal || updated) over its own batch exceeds max_step_kl
    # is undone (weights and optimizer state) and taken again at half the learning rate, up to
    # step_backtracks times; past that it is skipped. 0 = off.
    max_step_kl: float = 0.0
    step_backtracks: int = 3
    seed: int = 0


@dataclasses.dataclass
class StepMetrics:
    loss: float = 0.0
    grad_norm: float = 0.0
    clip_fraction: float = 0.0       # kept tokens where PPO took its clipped branch (no gradient)
    dual_clip_fraction: float = 0.0  # kept tokens held by the dual clip (no gradient)
    cap_fraction: float = 0.0
    approx_kl: float = 0.0
    kl_ref: float = 0.0
    step_kl: float | None = None     # KL(proximal || updated) over the batch, with the trust region on
    backtracks: int = 0              # halvings of the learning rate this step needed
    step_skipped: bool = False       # no learning rate within the backtracks kept step_kl in bounds
    # Off-policy health, from the proximal pass (the policy before the step):
    ess: float = 1.0                 # effective sample size of the behaviour weights, as a fraction of tokens
    behav_gap: float | None = None   # mean |logp_prox - logp_behav| over tokens of the trainer's own version
    adv_pos_mass: float = 0.0        # sum of positive token advantages
    adv_neg_mass: float = 0.0        # sum of |negative token advantages|
    entropy: float = 0.0             # mean entropy of the policy at response positions
    micro_batches: int = 0
    tokens: int = 0
    seconds_forward_backward: float = 0.0
    seconds_optimizer: float = 0.0
    seconds_proximal: float = 0.0


def _samples(rows: list[Row], images: ImageResolver) -> list[Sample]:
    out = []
    for r in rows:
        resolved = images(r.screenshots) if r.screenshots else None
        pixel_values, grid = resolved if resolved is not None else (None, None)
        out.append(Sample(r.prompt_ids, r.output_ids, pixel_values, grid))
    return out


def _padded(values: list[list[float]] | list[torch.Tensor], width: int, device) -> torch.Tensor:
    out = torch.zeros((len(values), width), dtype=torch.float32, device=device)
    for i, v in enumerate(values):
        t = v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float32)
        out[i, : len(t)] = t.to(device)
    return out


def local_micro_batches(rows: list[Row], d: Dist, budget: int,
                        owner: dict[int, int]) -> list[tuple[list[Row], float]]:
    """This rank's micro-batches with their weight (0 for the padding that keeps
    the ranks' forward counts equal). ``owner`` (id(row) -> rank) keeps a row on
    one rank for the whole step."""
    shards = [[r for r in rows if owner[id(r)] == k] for k in range(d.world)]
    per_rank = [micro_batches(shard, budget) if shard else [] for shard in shards]
    mine = [(m, 1.0) for m in per_rank[d.rank]]
    filler = rows[:1]
    while len(mine) < max(len(p) for p in per_rank):
        mine.append((filler, 0.0))
    return mine


def _logprobs(model, rows: list[Row], images: ImageResolver, cfg: StepConfig, d: Dist,
              owner: dict[int, int], entropy: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Logprobs of this rank's rows under ``model`` (no gradient), by id(row); with ``entropy``,
    the policy's entropy at each response position goes there too."""
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for batch, weight in local_micro_batches(rows, d, cfg.token_budget, owner):
            if entropy is None:
                logps, ents = output_logprobs(model, _samples(batch, images), cfg.temperature), []
            else:
                logps, ents = output_logprobs_and_entropy(model, _samples(batch, images), cfg.temperature)
            if weight:
                out.update({id(r): t.detach().float() for r, t in zip(batch, logps)})
                if entropy is not None:
                    entropy.update({id(r): e.detach().float() for r, e in zip(batch, ents)})
    return out


def _health(rows: list[Row], prox: dict[int, torch.Tensor], entropy: dict[int, torch.Tensor],
            version: int | None) -> list[float]:
    """This rank's sums for the off-policy health metrics: behaviour weights (sum, sum of squares),
    tokens, |prox - behav| and its count at the trainer's own version, advantage mass (+, -), entropy."""
    sums = [0.0] * 8
    for r in rows:
        if id(r) not in prox:
            continue
        p = prox[id(r)].double().cpu()
        b = torch.tensor(r.behav_logprobs, dtype=torch.float64)
        # Bounded so that one wild token reads as ESS near 0, not as inf/nan.
        w = torch.exp(torch.clamp(p - b, max=30.0))
        sums[0] += float(w.sum())
        sums[1] += float((w * w).sum())
        sums[2] += len(r.output_ids)
        if version is not None:
            same = torch.tensor([v == version for v in r.versions], dtype=torch.bool)
            sums[3] += float((p - b).abs()[same].sum())
            sums[4] += int(same.sum())
        sums[5] += max(r.advantage, 0.0) * len(r.output_ids)
        sums[6] += max(-r.advantage, 0.0) * len(r.output_ids)
        sums[7] += float(entropy[id(r)].sum())
    return sums


def _grad_norm(model, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(norm)


def _ppo_pass(model, optimizer, rows: list[Row], images: ImageResolver, cfg: StepConfig, d: Dist,
              owner: dict[int, int], prox: dict[int, torch.Tensor], ref: dict[int, torch.Tensor] | None,
              metrics: StepMetrics) -> tuple[list[float], list[float]]:
    """The epochs over minibatches: this rank's sums (loss, clipped, kept, capped, tokens, kl, kl rows,
    ref kl, dual-clipped) and the gradient norm of each optimizer step."""
    device = next(model.parameters()).device
    grpo = cfg.objective == "grpo"
    order = list(range(len(rows)))
    rng = random.Random(cfg.seed)
    sums = [0.0] * 9
    norms: list[float] = []
    metrics.micro_batches = metrics.tokens = 0
    model.train()
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        size = max(1, -(-len(order) // cfg.minibatches))
        for start in range(0, len(order), size):
            minibatch = [rows[i] for i in order[start:start + size]]
            total = sum(len(r.output_ids) for r in minibatch)
            optimizer.zero_grad(set_to_none=True)
            t = time.monotonic()
            for micro, weight in local_micro_batches(minibatch, d, cfg.token_budget, owner):
                logp_list = output_logprobs(model, _samples(micro, images), cfg.temperature)
                width = max(len(r.output_ids) for r in micro)
                logp = torch.nn.utils.rnn.pad_sequence(logp_list, batch_first=True)
                mask = _padded([[1.0] * len(r.output_ids) for r in micro], width, device)
                if grpo:
                    loss, stats = decoupled_ppo_loss(
                        logp,
                        _padded([prox[id(r)] for r in micro], width, device) if weight else logp.detach(),
                        _padded([r.behav_logprobs for r in micro], width, device),
                        _padded([[r.advantage] * len(r.output_ids) for r in micro], width, device),
                        mask,
                        clip_eps=cfg.clip_eps, dual_clip=cfg.dual_clip, behav_cap=cfg.behav_cap, total_tokens=total,
                        logp_ref=_padded([ref[id(r)] for r in micro], width, device) if ref and weight else None,
                        kl_coef=cfg.kl_coef,
                    )
                    if weight:
                        n = sum(len(r.output_ids) for r in micro)
                        sums[1:7] = [a + b for a, b in zip(sums[1:7], (
                            stats.clipped, stats.kept, stats.capped, n, stats.approx_kl, 1))]
                        sums[8] += stats.dual_clipped
                        if ref:
                            with torch.no_grad():
                                log_r = _padded([ref[id(r)] for r in micro], width, device) - logp.detach()
                                sums[7] += float(((torch.exp(log_r) - log_r - 1) * mask).sum())
                else:
                    loss = -(logp * mask).sum() / total
                (loss * weight * d.world).backward()
                if weight:
                    sums[0] += float(loss.detach())
                    metrics.micro_batches += 1
            metrics.seconds_forward_backward += time.monotonic() - t
            t = time.monotonic()
            norms.append(_grad_norm(model, cfg.max_grad_norm))
            optimizer.step()
            metrics.seconds_optimizer += time.monotonic() - t
            metrics.tokens += total
    model.eval()
    return sums, norms


def _step_kl(model, rows: list[Row], images: ImageResolver, cfg: StepConfig, d: Dist, owner: dict[int, int],
             prox: dict[int, torch.Tensor]) -> float:
    """KL(proximal || updated) per token over the whole batch (k3 estimator), the same on every rank."""
    new = _logprobs(model, rows, images, cfg, d, owner)
    kl, n = 0.0, 0
    for key, logp in new.items():
        log_r = logp - prox[key]
        kl += float((torch.exp(log_r) - log_r - 1).sum())
        n += logp.numel()
    kl, n = d.all_reduce_sum([kl, float(n)])
    return kl / n if n else 0.0


def _snapshot(model, optimizer) -> tuple[list[torch.Tensor], dict]:
    """The weights (this rank's shards under FSDP) and the optimizer state, to undo a step."""
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(optimizer.state_dict())


def _restore(model, optimizer, saved: tuple[list[torch.Tensor], dict]) -> None:
    params, state = saved
    with torch.no_grad():
        for p, old in zip(model.parameters(), params):
            p.copy_(old)
    optimizer.load_state_dict(copy.deepcopy(state))


def train_step(model, optimizer: torch.optim.Optimizer, rows: list[Row], images: ImageResolver,
               cfg: StepConfig, d: Dist | None = None, ref_model=None, version: int | None = None) -> StepMetrics:
    """``rows`` is the whole batch, the same on every rank; ``version`` the one the model's
    weights are (tokens of that version should have behaviour logprobs equal to the proximal)."""
    d = d or Dist()
    metrics = StepMetrics()
    if not rows:
        return metrics
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective: must be one of {OBJECTIVES}")
    grpo = cfg.objective == "grpo"
    owner = {id(r): i % d.world for i, r in enumerate(rows)}  # a row's rank for the whole step
    started = time.monotonic()
    # The proximal policy: the current weights, before this step changes them.
    entropy: dict[int, torch.Tensor] = {}
    prox = _logprobs(model, rows, images, cfg, d, owner, entropy) if grpo else {}
    if grpo:
        w_sum, w_sq, n_tok, gap, gap_n, pos, neg, ent = d.all_reduce_sum(_health(rows, prox, entropy, version))
        metrics.ess = w_sum * w_sum / (n_tok * w_sq) if w_sq > 0 else 0.0
        metrics.behav_gap = gap / gap_n if gap_n else None
        metrics.adv_pos_mass, metrics.adv_neg_mass = pos, neg
        metrics.entropy = ent / n_tok if n_tok else 0.0
    ref = _logprobs(ref_model, rows, images, cfg, d, owner) if grpo and ref_model is not None and cfg.kl_coef > 0 \
        else None
    metrics.seconds_proximal = time.monotonic() - started
    trust = grpo and cfg.max_step_kl > 0
    saved = _snapshot(model, optimizer) if trust else None
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    attempt = 0
    while True:
        sums, norms = _ppo_pass(model, optimizer, rows, images, cfg, d, owner, prox, ref, metrics)
        if not trust:
            break
        metrics.step_kl = _step_kl(model, rows, images, cfg, d, owner, prox)
        if metrics.step_kl <= cfg.max_step_kl:
            break
        _restore(model, optimizer, saved)
        if attempt == cfg.step_backtracks:
            metrics.step_skipped = True
            break
        attempt += 1
        metrics.backtracks = attempt
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * 0.5 ** attempt
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr
    loss, clipped, kept, capped, tokens, kl, kl_rows, kl_ref, dual = d.all_reduce_sum(sums)
    metrics.micro_batches = int(d.all_reduce_sum([metrics.micro_batches])[0])
    metrics.loss = loss
    metrics.grad_norm = max(norms) if norms else 0.0
    metrics.clip_fraction = clipped / kept if kept else 0.0
    metrics.dual_clip_fraction = dual / kept if kept else 0.0
    metrics.cap_fraction = capped / tokens if tokens else 0.0
    metrics.approx_kl = kl / kl_rows if kl_rows else 0.0
    metrics.kl_ref = kl_ref / tokens if tokens else 0.0
    return metrics
