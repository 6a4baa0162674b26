"""A real training step on the tiny model: rows from groups, micro-batches, and the policy
moving towards the successful episode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from asyncwebrl.common.agent.vision import decode_image, process_images
from asyncwebrl.common.models.loading import load_policy
from asyncwebrl.common.models.logprobs import Sample, output_logprobs
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.trainer.batching import micro_batches, rows_from_groups
from asyncwebrl.trainer.step import StepConfig, train_step
from asyncwebrl.v1 import buffer_pb2, env_pb2


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(90, 120, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup():
    policy = load_policy(SHIPPED / "qwen2_5_vl", device="cpu")
    blobs = {f"{i:064x}": _png(i) for i in range(2)}

    def images(refs):
        batch = process_images(policy.image_processor, [decode_image(blobs[r.sha256]) for r in refs])
        return batch.pixel_values, batch.grid_thw

    def step(seed: int, output: list[int]) -> buffer_pb2.StepRecord:
        ref = env_pb2.ScreenshotRef(sha256=f"{seed:064x}", width=120, height=90, mime="image/png", size_bytes=10)
        pv, grid = images([ref])
        n = int(grid.prod()) // 4
        prompt = [20, 21, policy.vision_start_id] + [policy.image_token_id] * n + [policy.vision_end_id, 30]
        with torch.no_grad():
            (lp,) = output_logprobs(policy.model, [Sample(prompt, output, pv, grid)])
        return buffer_pb2.StepRecord(prompt_ids=prompt, screenshots=[ref], output_ids=output, logprobs=lp.tolist(),
                                     versions=[0] * len(output))

    good = buffer_pb2.EpisodeRecord(episode_id="win", steps=[step(0, [100, 101, 102])], reward=1.0, success=True,
                                    length=1)
    bad = buffer_pb2.EpisodeRecord(episode_id="lose", steps=[step(1, [200, 201, 202]), step(1, [203, 204])],
                                   reward=0.0, length=2)
    group = buffer_pb2.Group(group_id="g", job_id="j", task="t", difficulty="easy", episodes=[good, bad])
    return policy, images, group


def test_rows_carry_the_step_advantage(setup):
    _, _, group = setup
    rows, stats = rows_from_groups([group], "constant", 10)
    assert [r.episode_id for r in rows] == ["win", "lose", "lose"] and stats.response_tokens == 8
    # rewards [1, 0]: A = ±0.5 / sqrt(0.5) = ±0.7071, over k = 10
    assert rows[0].advantage == pytest.approx(0.07071, abs=1e-4) and rows[1].advantage == pytest.approx(-0.07071, abs=1e-4)
    rows_tau, _ = rows_from_groups([group], "trajectory")
    assert rows_tau[1].advantage == pytest.approx(rows_tau[0].advantage * -0.5, rel=1e-3), "halved by |tau| = 2"
    flat = buffer_pb2.Group(group_id="z", job_id="j", task="t", difficulty="easy",
                            episodes=[group.episodes[1], group.episodes[1]])
    kept, _ = rows_from_groups([flat])
    assert len(kept) == 4 and all(r.advantage == 0 for r in kept), "the buffer filters; a kept group has no push"
    with pytest.raises(ValueError, match="vocabulary"):
        rows_from_groups([group], vocab_size=150)


def test_micro_batches_respect_the_budget(setup):
    _, _, group = setup
    rows, _ = rows_from_groups([group])
    width = max(r.tokens for r in rows)
    assert [len(b) for b in micro_batches(rows, width * 3)] == [3]
    assert [len(b) for b in micro_batches(rows, width * 2)] == [2, 1]
    assert [len(b) for b in micro_batches(rows, 1)] == [1, 1, 1], "a row over the budget goes alone"


def test_a_training_step_moves_the_policy_towards_success(setup):
    policy, images, group = setup
    model = load_policy(SHIPPED / "qwen2_5_vl", device="cpu").model
    rows, _ = rows_from_groups([group], "constant", 1.0)

    def row_logp(i: int) -> float:
        with torch.no_grad():
            pv, grid = images(rows[i].screenshots)
            (lp,) = output_logprobs(model, [Sample(rows[i].prompt_ids, rows[i].output_ids, pv, grid)])
        return float(lp.sum())

    before = [row_logp(i) for i in range(3)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # A small budget: several micro-batches accumulate into one optimizer step.
    metrics = train_step(model, optimizer, rows, images, StepConfig(token_budget=rows[0].tokens + 1))
    after = [row_logp(i) for i in range(3)]
    assert after[0] > before[0], "the successful step became more likely"
    assert after[1] < before[1] and after[2] < before[2], "the failed steps less likely"
    assert metrics.micro_batches == 3 and metrics.tokens == 8 and metrics.grad_norm > 0
    assert metrics.cap_fraction == 0.0 and metrics.clip_fraction == 0.0, "on-policy: ratio 1, weight 1"


def test_off_policy_health_on_and_off_policy(setup):
    policy, images, group = setup
    model = load_policy(SHIPPED / "qwen2_5_vl", device="cpu").model
    rows, _ = rows_from_groups([group], "constant", 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    # On-policy (the behaviour logprobs are this model's): every weight is 1.
    on = train_step(model, optimizer, rows, images, StepConfig(), version=0)
    assert on.ess == pytest.approx(1.0, abs=1e-6) and on.behav_gap == pytest.approx(0.0, abs=1e-5)
    assert on.clip_fraction == 0.0 and on.dual_clip_fraction == 0.0
    assert on.adv_pos_mass == pytest.approx(3 * 0.7071, abs=1e-3), "3 tokens of the success at +0.7071"
    assert on.adv_neg_mass == pytest.approx(5 * 0.7071, abs=1e-3), "5 tokens of the failure at -0.7071"
    vocab = policy.model.config.get_text_config().vocab_size
    assert 0.5 < on.entropy <= np.log(vocab) + 1e-6, "a random model is near uniform"
    # The engine disagreed on two tokens of a row the trainer's own version wrote: the gap and ESS show it.
    rows[0].behav_logprobs = [rows[0].behav_logprobs[0] - 1.0, rows[0].behav_logprobs[1] + 1.0,
                              *rows[0].behav_logprobs[2:]]
    off = train_step(model, optimizer, rows, images, StepConfig(), version=0)
    assert off.behav_gap == pytest.approx(2.0 / 8, abs=1e-4)
    w = np.array([np.e, 1 / np.e] + [1.0] * 6)
    assert off.ess == pytest.approx(w.sum() ** 2 / (8 * (w * w).sum()), rel=1e-4) and off.ess < 0.9
    # Tokens of another version do not count towards the gap (they may differ by design).
    assert train_step(model, optimizer, rows, images, StepConfig(), version=5).behav_gap is None


def test_the_trust_region_undoes_a_step_that_moves_the_policy_too_far(setup):
    """A learning rate that throws the policy far (the tiny model's collapses began with one such step)
    is halved until the step stays within max_step_kl; past step_backtracks the step is skipped and the
    weights and optimizer state are exactly what they were."""
    _, images, group = setup
    rows, _ = rows_from_groups([group], "constant", 1.0)
    model = load_policy(SHIPPED / "qwen2_5_vl", device="cpu").model
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    free = train_step(model, optimizer, rows, images, StepConfig(max_step_kl=0.0))
    assert free.step_kl is None and free.backtracks == 0, "off by default: no extra pass"

    model = load_policy(SHIPPED / "qwen2_5_vl", device="cpu").model
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    bounded = train_step(model, optimizer, rows, images, StepConfig(max_step_kl=0.05, step_backtracks=10))
    assert 0 < bounded.step_kl <= 0.05 and bounded.backtracks >= 1 and not bounded.step_skipped
    assert optimizer.param_groups[0]["lr"] == 0.1, "the schedule's rate is restored for the next step"

    model = load_policy(SHIPPED / "qwen2_5_vl", device="cpu").model
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    skipped = train_step(model, optimizer, rows, images, StepConfig(max_step_kl=1e-9, step_backtracks=1))
    assert skipped.step_skipped and skipped.backtracks == 1 and skipped.step_kl > 1e-9
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "the weights are untouched"
    assert not optimizer.state_dict()["state"], "and so is AdamW's state (no moments yet)"
