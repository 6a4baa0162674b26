"""Load a Qwen-VL policy (model, tokenizer, image processor) from a local directory.

Never downloads: every call passes ``local_files_only``. Point ``path`` at any
Hugging Face checkpoint directory of Qwen2.5-VL or Qwen3-VL (``config.json``,
``*.safetensors``, ``tokenizer.json``, ``preprocessor_config.json``), e.g. one
fetched beforehand with ``huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct
--local-dir /models/qwen2.5-vl-3b``; the tiny shipped ones live under
``asyncwebrl/common/models/tiny/``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import torch
import transformers

from asyncwebrl.common.agent.vision import load_processors

MODEL_CLASSES = {
    "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: transformers.PreTrainedTokenizerBase
    image_processor: transformers.Qwen2VLImageProcessorPil
    family: str
    path: pathlib.Path
    image_token_id: int
    vision_start_id: int
    vision_end_id: int
    eos_ids: tuple[int, ...]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)


def model_family(path: pathlib.Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model_path: no config.json in {path}")
    family = json.loads(config_file.read_text()).get("model_type", "")
    if family not in MODEL_CLASSES:
        raise ValueError(f"model_path: model_type {family!r} is not one of {sorted(MODEL_CLASSES)}")
    return family


def set_torch_threads(n: int) -> None:
    """``n`` intra-op threads (0 keeps torch's one per core). Processes sharing a machine's cores each
    default to all of them, and together run many times slower than their share."""
    if n > 0:
        torch.set_num_threads(n)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_policy(path: str | pathlib.Path, device: str = "auto", dtype: str = "auto") -> Policy:
    path = pathlib.Path(path)
    family = model_family(path)
    dev = resolve_device(device)
    transformers.utils.logging.disable_progress_bar()
    model = MODEL_CLASSES[family].from_pretrained(
        path, local_files_only=True, dtype=resolve_dtype(dtype, dev), attn_implementation="sdpa"
    ).to(dev).eval()
    tokenizer, processor = load_processors(path)
    config = model.config
    eos = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    text_eos = getattr(config.get_text_config(), "eos_token_id", None)
    for e in [text_eos] if isinstance(text_eos, int) else (text_eos or []):
        eos.add(e)
    return Policy(
        model=model,
        tokenizer=tokenizer,
        image_processor=processor,
        family=family,
        path=path,
        image_token_id=config.image_token_id,
        vision_start_id=config.vision_start_token_id,
        vision_end_id=config.vision_end_token_id,
        eos_ids=tuple(sorted(e for e in eos if isinstance(e, int) and e >= 0)),
    )


def load_weights(model: torch.nn.Module, path: str | pathlib.Path) -> int:
    """Load a checkpoint directory's weights into ``model`` in place.

    The checkpoint is read by transformers itself (on the CPU), so its key
    naming and conversions are whatever ``from_pretrained`` accepts; then every
    tensor is checked against the running model before any is copied: a
    different family, a missing tensor or another shape raises and changes
    nothing. Returns the bytes of the weight files."""
    path = pathlib.Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model_path: no .safetensors files in {path}")
    family = model_family(path)
    if family != model.config.model_type:
        raise ValueError(f"model_path: a {family} checkpoint cannot replace a {model.config.model_type} model")
    transformers.utils.logging.disable_progress_bar()
    dtype = next(model.parameters()).dtype
    fresh = MODEL_CLASSES[family].from_pretrained(path, local_files_only=True, dtype=dtype)
    state, own = fresh.state_dict(), model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"model_path: tensors missing {missing[:5]} or unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(f"model_path: {name} has shape {tuple(tensor.shape)}, the model {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)
    return sum(f.stat().st_size for f in files)
