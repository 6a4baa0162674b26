"""One training step on a batch of rows: proximal logprobs first, then PPO epochs
over minibatches of micro-batches, with gradient clipping and AdamW."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

import numpy as np
import torch

from asyncwebrl.common.models.logprobs import Sample, output_logprobs
from asyncwebrl.trainer.algorithm import decoupled_ppo_loss
from asyncwebrl.trainer.batching import Row, micro_batches

# refs -> (pixel_values, image_grid_thw) of the row's screenshots, in order.
ImageResolver = Callable[[list], tuple[np.ndarray, np.ndarray] | None]


@dataclasses.dataclass
class StepConfig:
    epochs: int = 1
    minibatches: int = 1
    token_budget: int = 16384
    clip_eps: float = 0.2
    dual_clip: float = 3.0
    behav_cap: float = 5.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    kl_coef: float = 0.0
    seed: int = 0


@dataclasses.dataclass
class StepMetrics:
    loss: float = 0.0
    grad_norm: float = 0.0
    clip_fraction: float = 0.0
    cap_fraction: float = 0.0
    approx_kl: float = 0.0
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


def proximal_logprobs(model, rows: list[Row], images: ImageResolver, cfg: StepConfig) -> list[torch.Tensor]:
    """The proximal policy: the current weights, before this step changes them."""
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in micro_batches(rows, cfg.token_budget):
            out.extend(t.detach() for t in output_logprobs(model, _samples(batch, images), cfg.temperature))
    return out


def train_step(model, optimizer: torch.optim.Optimizer, rows: list[Row], images: ImageResolver,
               cfg: StepConfig) -> StepMetrics:
    metrics = StepMetrics()
    if not rows:
        return metrics
    device = next(model.parameters()).device
    started = time.monotonic()
    prox = proximal_logprobs(model, rows, images, cfg)
    metrics.seconds_proximal = time.monotonic() - started
    order = list(range(len(rows)))
    rng = random.Random(cfg.seed)
    losses, clip, cap, kl, norms = [], [], [], [], []
    model.train()
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        size = max(1, -(-len(order) // cfg.minibatches))
        for start in range(0, len(order), size):
            chosen = order[start:start + size]
            minibatch = [rows[i] for i in chosen]
            total = sum(len(r.output_ids) for r in minibatch)
            optimizer.zero_grad(set_to_none=True)
            t = time.monotonic()
            position = {id(r): i for r, i in zip(minibatch, chosen)}
            for micro in micro_batches(minibatch, cfg.token_budget):
                logp_list = output_logprobs(model, _samples(micro, images), cfg.temperature)
                width = max(len(r.output_ids) for r in micro)
                logp = torch.nn.utils.rnn.pad_sequence(logp_list, batch_first=True)
                mask = _padded([[1.0] * len(r.output_ids) for r in micro], width, device)
                loss, stats = decoupled_ppo_loss(
                    logp,
                    _padded([prox[position[id(r)]] for r in micro], width, device),
                    _padded([r.behav_logprobs for r in micro], width, device),
                    _padded([[r.advantage] * len(r.output_ids) for r in micro], width, device),
                    mask,
                    clip_eps=cfg.clip_eps, dual_clip=cfg.dual_clip, behav_cap=cfg.behav_cap, total_tokens=total,
                )
                loss.backward()
                losses.append(float(loss.detach()))
                clip.append((stats.clipped, stats.kept))
                cap.append((stats.capped, sum(len(r.output_ids) for r in micro)))
                kl.append(stats.approx_kl)
                metrics.micro_batches += 1
            metrics.seconds_forward_backward += time.monotonic() - t
            t = time.monotonic()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)))
            optimizer.step()
            metrics.seconds_optimizer += time.monotonic() - t
            metrics.tokens += total
    model.eval()
    metrics.loss = sum(losses)
    metrics.grad_norm = max(norms) if norms else 0.0
    kept = sum(k for _, k in clip)
    metrics.clip_fraction = sum(c for c, _ in clip) / kept if kept else 0.0
    tokens = sum(n for _, n in cap)
    metrics.cap_fraction = sum(c for c, _ in cap) / tokens if tokens else 0.0
    metrics.approx_kl = sum(kl) / len(kl) if kl else 0.0
    return metrics
