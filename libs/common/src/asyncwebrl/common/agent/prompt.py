"""Prompts for Qwen-VL chat models, and their token ids with image placeholders.

One prompt per step: the system prompt with the action grammar, the task's
instruction, one line per earlier step (its action and whether the page
changed), and the last ``history_window`` earlier screenshots plus the current
one as images. In the text each image is ``<|vision_start|><|image_pad|><|vision_end|>``;
in the token ids the single pad becomes as many pads as the image has merged
patches, which is what the model and the trainer consume.
"""

from __future__ import annotations

import dataclasses

from asyncwebrl.common.agent.actions import GRAMMAR

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
MAX_HISTORY_LINES = 30
MAX_TITLE = 80
MAX_INSTRUCTION = 2000


@dataclasses.dataclass(frozen=True)
class HistoryStep:
    """What the prompt says about one earlier step."""

    title: str
    action: str  # ParsedAction.summary()
    page_changed: bool


def system_prompt() -> str:
    return "You are a web agent. You see screenshots of a browser and act to complete the user's task.\n" + GRAMMAR


def history_lines(history: list[HistoryStep]) -> list[str]:
    first = max(0, len(history) - MAX_HISTORY_LINES)
    lines = [f"(earlier steps omitted: {first})"] if first else []
    for i, step in enumerate(history[first:], start=first + 1):
        title = " ".join(step.title.split())[:MAX_TITLE]
        changed = "page changed" if step.page_changed else "page unchanged"
        lines.append(f"Step {i} on [{title}]: {step.action[:200]} -> {changed}")
    return lines


def render(instruction: str, history: list[HistoryStep], n_images: int) -> str:
    """The chat text, ending where the assistant's answer starts."""
    instruction = " ".join(instruction.split())[:MAX_INSTRUCTION]
    user = [f"Task: {instruction}"]
    lines = history_lines(history)
    if lines:
        user += ["Earlier steps:", *lines]
    label = "Current screenshot:" if n_images == 1 else f"Last {n_images} screenshots, oldest first, current last:"
    user += [label, IMAGE * n_images]
    return (
        f"<|im_start|>system\n{system_prompt()}<|im_end|>\n"
        f"<|im_start|>user\n" + "\n".join(user) + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def image_pad_runs(ids: list[int], image_token_id: int) -> list[int]:
    """The length of every run of image pads, in order."""
    runs: list[int] = []
    previous = None
    for t in ids:
        if t == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = t
    return runs


def expand_image_tokens(ids: list[int], image_token_id: int, counts: list[int]) -> list[int]:
    """Replace the i-th lone image pad with ``counts[i]`` pads; a run already of
    the right length is kept. Raises ValueError when pads and images disagree."""
    out: list[int] = []
    i, n, image = 0, len(ids), 0
    while i < n:
        if ids[i] != image_token_id:
            out.append(ids[i])
            i += 1
            continue
        j = i
        while j < n and ids[j] == image_token_id:
            j += 1
        run = j - i
        if image >= len(counts):
            raise ValueError(f"the prompt has more image placeholders than the {len(counts)} images given")
        want = counts[image]
        if run not in (1, want):
            raise ValueError(f"image {image}: {run} placeholder tokens, expected 1 or {want}")
        out.extend([image_token_id] * want)
        image += 1
        i = j
    if image != len(counts):
        raise ValueError(f"{len(counts)} images given but the prompt has {image} image placeholders")
    return out


def collapse_image_tokens(ids: list[int], image_token_id: int) -> list[int]:
    """Each run of image pads as one pad: the request SGLang accepts, which it
    expands itself (the inverse of ``expand_image_tokens``)."""
    return [t for i, t in enumerate(ids) if t != image_token_id or i == 0 or ids[i - 1] != image_token_id]


def prompt_ids(tokenizer, text: str, image_token_id: int, counts: list[int]) -> list[int]:
    """The expanded ids the model and the trainer consume."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return expand_image_tokens(ids, image_token_id, counts)
