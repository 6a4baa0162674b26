"""Qwen-VL loading, the shipped tiny checkpoints, and the trainer's logprob function."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from asyncwebrl.common.agent.vision import process_images
from asyncwebrl.common.models.loading import load_policy, load_weights
from asyncwebrl.common.models.logprobs import Sample, output_logprobs
from asyncwebrl.common.models.tiny import FAMILIES, SHIPPED, write_tiny
from PIL import Image


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_tiny_checkpoints_are_what_the_generator_makes(family, tmp_path):
    fresh = write_tiny(family, tmp_path / family)
    shipped = sorted(p.name for p in (SHIPPED / family).iterdir())
    assert shipped == sorted(p.name for p in fresh.iterdir())
    for name in shipped:
        assert (fresh / name).read_bytes() == (SHIPPED / family / name).read_bytes(), \
            f"{family}/{name} is stale: run python -m asyncwebrl.common.models.tiny"


@pytest.mark.parametrize("family", FAMILIES)
def test_load_policy(family):
    policy = load_policy(SHIPPED / family, device="cpu")
    assert policy.family == family and policy.device.type == "cpu"
    assert policy.image_token_id == policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert policy.tokenizer.convert_tokens_to_ids("<|im_end|>") in policy.eos_ids
    assert sum(p.numel() for p in policy.model.parameters()) < 1_000_000
    assert next(policy.model.parameters()).dtype == torch.float32


def test_load_weights_is_strict_and_in_place(tmp_path):
    policy = load_policy(SHIPPED / "qwen2_5_vl", device="cpu")
    other = load_policy(SHIPPED / "qwen2_5_vl", device="cpu")
    with torch.no_grad():
        for p in other.model.parameters():
            p.mul_(0.5)
    other.model.save_pretrained(tmp_path / "half")
    assert load_weights(policy.model, tmp_path / "half") > 0
    for a, b in zip(policy.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)
    before = [p.clone() for p in policy.model.parameters()]
    with pytest.raises(ValueError, match="cannot replace"):
        load_weights(policy.model, SHIPPED / "qwen3_vl")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_weights(policy.model, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters())), "refusals change nothing"


def _image_sample(policy, seed: int, n_prompt: int, n_out: int) -> Sample:
    rng = np.random.RandomState(seed)
    batch = process_images(policy.image_processor, [Image.fromarray((rng.rand(100, 140, 3) * 255).astype("uint8"))])
    pad = policy.image_token_id
    prompt = [20 + i for i in range(n_prompt)] + [policy.vision_start_id] + [pad] * batch.token_counts[0] + \
        [policy.vision_end_id, 30]
    return Sample(prompt, [40 + (seed + i) % 50 for i in range(n_out)], batch.pixel_values, batch.grid_thw)


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_do_not_depend_on_the_batch_and_carry_gradients(family):
    policy = load_policy(SHIPPED / family, device="cpu")
    samples = [_image_sample(policy, 0, 5, 7), _image_sample(policy, 1, 30, 3),
               Sample([21, 22, 23], [50, 51, 52, 53])]
    with torch.no_grad():
        together = output_logprobs(policy.model, samples)
        alone = [output_logprobs(policy.model, [s])[0] for s in samples]
    for a, b, s in zip(together, alone, samples):
        assert a.shape == (len(s.output_ids),) and torch.allclose(a, b, atol=1e-5)
        assert bool((a <= 0).all())
    hot = output_logprobs(policy.model, samples[:1], temperature=0.5)[0]
    loss = -hot.sum()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.model.parameters())
    with pytest.raises(ValueError, match="temperature"):
        output_logprobs(policy.model, samples, temperature=0)


def test_tiny_module_cli_writes_both_families(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "asyncwebrl.common.models.tiny", "--out", str(tmp_path)], check=True,
                   capture_output=True)
    assert sorted(p.name for p in pathlib.Path(tmp_path).iterdir()) == sorted(FAMILIES)
