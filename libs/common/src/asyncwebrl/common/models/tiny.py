"""Tiny Qwen2.5-VL and Qwen3-VL policies with random weights, for tests and the local demo.

Each lives in a directory laid out like a real Hugging Face checkpoint
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
preprocessor_config.json), so the code that loads them loads a real
checkpoint unchanged. They are generated deterministically and shipped in the
repository; ``python -m asyncwebrl.common.models.tiny`` regenerates them and a
test checks the shipped files match.

The tokenizer is a byte-level BPE trained offline in milliseconds on a small
built-in corpus, with the Qwen chat and vision special tokens.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile

SHIPPED = pathlib.Path(__file__).resolve().parent / "tiny"
FAMILIES = ("qwen2_5_vl", "qwen3_vl")
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
)
BPE_VOCAB = 1024
SEED = 0
# Screenshots are downscaled to at most this many pixels: ~64 image tokens each.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 224 * 224


def _corpus() -> list[str]:
    from asyncwebrl.common.agent.actions import ACTIONS, GRAMMAR

    words = (
        "click the button submit search type enter name email password next page back answer "
        "select the option with text in the field below above left right scroll down up find "
        "the order number of items in the cart total price date flight from to book a ticket "
        "Memory: Progress: Intention: Step on page changed unchanged The task is done"
    ).split()
    lines = [GRAMMAR]
    for i, action in enumerate(ACTIONS):
        call = {"name": "computer_use", "arguments": {"action": action, "coordinate": [i * 97 % 1000, i * 53 % 1000]}}
        lines.append(f"Memory: step {i}. Intention: {action}.\n<tool_call>{json.dumps(call)}</tool_call>")
    for i in range(200):
        lines.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) + f" {i} {i * 13 % 1000}")
    return lines


def build_tokenizer():
    """A PreTrainedTokenizerFast with the Qwen special tokens at ids 0..8."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )


def tiny_config(family: str, tokenizer, **text_overrides):
    """The configuration of a ~0.3M-parameter model of ``family``; ``text_overrides`` (hidden_size,
    intermediate_size, num_hidden_layers) make bigger ones of the same shape for benchmarks."""
    import transformers

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (len(tokenizer) + 63) // 64 * 64
    text = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, eos_token_id=ids["<|im_end|>"],
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
    )
    text.update(text_overrides)
    common = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"], spatial_merge_size=2,
                  temporal_patch_size=2)
    if family == "qwen2_5_vl":
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        return transformers.Qwen2_5_VLConfig(
            text_config=text, vision_config=dict(vision, patch_size=14, fullatt_block_indexes=[1], window_size=56),
            **common,
        )
    if family == "qwen3_vl":
        text.update(head_dim=16, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                "mrope_interleaved": True})
        return transformers.Qwen3VLConfig(
            text_config=text,
            vision_config=dict(vision, patch_size=16, deepstack_visual_indexes=[1], num_position_embeddings=144),
            **common,
        )
    raise ValueError(f"family: must be one of {FAMILIES}, got {family!r}")


def patch_size(family: str) -> int:
    return 16 if family == "qwen3_vl" else 14


def write_tiny(family: str, out: pathlib.Path, seed: int = SEED, **text_overrides) -> pathlib.Path:
    """Write a complete checkpoint directory; the same seed gives the same bytes."""
    import torch
    from transformers import Qwen2VLImageProcessorPil

    from asyncwebrl.common.models.loading import MODEL_CLASSES

    import transformers

    transformers.utils.logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(family, tokenizer, **text_overrides)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size(family), merge_size=2, temporal_patch_size=2, min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
    processor.save_pretrained(out)
    return out


def regenerate(root: pathlib.Path = SHIPPED) -> None:
    for family in FAMILIES:
        with tempfile.TemporaryDirectory() as tmp:
            write_tiny(family, pathlib.Path(tmp) / family)
            target = root / family
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(pathlib.Path(tmp) / family, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=SHIPPED, help="directory to write the families under")
    args = parser.parse_args()
    regenerate(args.out)
    print(f"wrote {', '.join(FAMILIES)} under {args.out}")


if __name__ == "__main__":
    main()
