"""Per-token logprobs of given output tokens under a Qwen-VL model.

The trainer's function, and the definition the engine must match: the logprob
of token t is ``log_softmax(logits / temperature)[t]`` (temperature 1 for greedy
requests), with Qwen's 3-D rotary positions computed from the prompt's images.
Differentiable; gradients flow when called outside ``torch.no_grad``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class Sample:
    prompt_ids: list[int]
    output_ids: list[int]
    pixel_values: np.ndarray | torch.Tensor | None = None  # patches of every image of the prompt, in order
    image_grid_thw: np.ndarray | torch.Tensor | None = None


def _tensor(x, dtype=None) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


def mrope_positions(model, input_ids, attention_mask, image_grid_thw, mm_token_type_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D positions (3, batch, length) and each row's offset for later tokens."""
    return model.model.get_rope_index(
        input_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids
    )


def batch_inputs(model, samples: list[Sample], device: torch.device) -> dict:
    """Right-padded prompt+output ids with everything a forward pass needs."""
    lengths = [len(s.prompt_ids) + len(s.output_ids) for s in samples]
    width = max(lengths)
    pad = int(getattr(model.config.get_text_config(), "pad_token_id", None) or 0)
    ids = torch.full((len(samples), width), pad, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        row = torch.tensor(list(s.prompt_ids) + list(s.output_ids), dtype=torch.long)
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    ids, mask = ids.to(device), mask.to(device)
    mm = (ids == model.config.image_token_id).long()
    images = [s for s in samples if s.image_grid_thw is not None and len(s.image_grid_thw)]
    pixel_values = grid = None
    if images:
        dtype = next(model.parameters()).dtype
        pixel_values = torch.cat([_tensor(s.pixel_values, torch.float32) for s in images]).to(device, dtype)
        grid = torch.cat([_tensor(s.image_grid_thw, torch.long) for s in images]).to(device)
    positions, _ = mrope_positions(model, ids, mask, grid, mm)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
        "mm_token_type_ids": mm,
    }


def logprob_temperature(sampling_temperature: float) -> float:
    """The temperature logprobs are taken at for a sampling temperature: greedy (0) at 1."""
    return sampling_temperature if sampling_temperature > 0 else 1.0


def output_logprobs(model, samples: list[Sample], temperature: float = 1.0) -> list[torch.Tensor]:
    """For each sample, the logprob of each output token given everything before it."""
    return _outputs(model, samples, temperature, entropy=False)[0]


def output_logprobs_and_entropy(model, samples: list[Sample],
                                temperature: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``output_logprobs`` and, at each output position, the entropy of the sampling distribution."""
    return _outputs(model, samples, temperature, entropy=True)


def _outputs(model, samples: list[Sample], temperature: float, entropy: bool):
    if temperature <= 0:
        raise ValueError("temperature: must be > 0 (use 1.0 for greedy outputs)")
    device = next(model.parameters()).device
    inputs = batch_inputs(model, samples, device)
    logits = model(**inputs, use_cache=False).logits.float()
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    out, entropies = [], []
    for i, s in enumerate(samples):
        start, n = len(s.prompt_ids), len(s.output_ids)
        targets = inputs["input_ids"][i, start : start + n]
        # Position p predicts token p + 1.
        rows = logprobs[i, start - 1 : start - 1 + n]
        out.append(rows.gather(-1, targets[:, None])[:, 0])
        if entropy:
            entropies.append(-(rows.exp() * rows).sum(-1))
    return out, entropies
