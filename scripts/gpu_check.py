"""The GPU path, checked in one prepared script: training step, embedded engine, weight transfer.

CI and the development machines are CPU-only, so the code that matters most on
GPUs (bf16 training under FSDP2, generation on CUDA, moving a new version from
the trainer to an engine) is checked here, on one GPU, with no network:

1. train: a Qwen2.5-VL model at a real size (the 3B configuration under
   ``scripts/configs/qwen2_5_vl_3b``: 3.75B parameters, the
   real vocabulary of 151,936, random bf16 weights written as a starting
   checkpoint) and the image processor at the real model's pixel limits, then
   the trainer's own ``Learner.train`` (``asyncwebrl.trainer.step.train_step``:
   proximal logprobs, decoupled-PPO forward and backward, AdamW) on agent
   batches of the shape the gateway writes: 8 episodes of several steps,
   1280x720 screenshots (the current one and ``history_window`` = 1 earlier
   one), prompts of 2-4k tokens with token ids drawn at random over the
   vocabulary around correctly placed image placeholders. The model is sharded
   with the trainer's own FSDP2 code (``asyncwebrl.trainer.dist.shard``) on a
   process group of one: fp32 master weights, bf16 compute, the same
   collectives as on 8 GPUs. Reported: train tokens/s, peak memory, model
   FLOPs utilisation against the GPU's dense bf16 peak (the FLOP count is
   written into the JSON), and the top operators of a profiled step.
2. engine: the embedded engine (``asyncwebrl.engine.core.Engine``) in its own
   process on the same GPU, with 1, 8 and 32 requests in flight (closed
   loop): generated tokens/s and time to first token.
3. transfer: the trainer process writes version 1 (``Learner.write_version``)
   and the running engine process verifies its manifest and loads it
   (``Engine.update_weights``, what ``/update_weights_from_disk`` runs). The
   NCCL broadcast path (``update_weights_from_distributed``) does not exist
   yet (docs/weightsync.md), so this is the disk path; the JSON says so.
   Then the engine's weights are compared with the trainer's (per-tensor
   checksums in the engine's dtype, and the logprobs of one sample).
4. one JSON file (``--out``) with everything, the GPU's name and the versions
   of torch and CUDA; it is rewritten after every phase and printed as the
   last line of stdout.

``--cpu-smoke`` runs the same code on a tiny configuration on the CPU (gloo
instead of NCCL, fp32) in well under a minute; ``make gpu-check`` and a test
run it, so this script cannot rot.

Imports: torch, transformers, safetensors, numpy and PIL, and from this
repository only the torch-side modules (model loading and logprobs, the image
processing, weights, the trainer's learner/step/dist/config and the engine's
core). The repository's source folders are put on ``sys.path`` here, so no
install is needed. The engine's metrics need ``prometheus_client``. If the
generated protobuf stubs cannot be imported (protobuf missing, or older than
the stubs' 7.35.1), the two stub modules that ``asyncwebrl.trainer.batching``
imports for type annotations only are replaced by empty placeholders, and
the JSON's ``imports.placeholders`` says so.

On a machine with a GPU: ``python3 scripts/gpu_check.py --out gpu_check.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import io
import json
import math
import os
import pathlib
import platform
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "libs" / "common" / "src", ROOT / "services" / "trainer" / "src", ROOT / "services" / "engine" / "src"]
for _src in reversed(SOURCES):
    if _src.is_dir() and str(_src) not in sys.path:
        sys.path.insert(0, str(_src))

CONFIG_3B = ROOT / "scripts" / "configs" / "qwen2_5_vl_3b"  # the real config.json and preprocessor_config.json
PROTOCOL = "@@gpu_check "
TIME_BUDGET_S = {"gpu": 480.0, "cpu-smoke": 60.0}
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
BF16_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)
# The Qwen2.5 token ids that the 3B config.json does not name (the real tokenizer's).
QWEN_IM_START, QWEN_TOOL_CALL, QWEN_TOOL_CALL_END = 151644, 151657, 151658

_T0 = time.monotonic()


def log(message: str, worker: bool = False) -> None:
    stream = sys.stderr if worker else sys.stdout
    print(f"[{'engine' if worker else 'gpu_check'} +{time.monotonic() - _T0:6.1f}s] {message}", file=stream,
          flush=True)


# --- imports -----------------------------------------------------------------------

def import_protobuf_stubs() -> list[str]:
    """The trainer's batching module imports the protobuf stubs for annotations only. Where the
    stubs cannot be imported, empty placeholders stand in; returns what was replaced and why."""
    names = ("asyncwebrl.v1.env_pb2", "asyncwebrl.v1.buffer_pb2")
    try:
        for name in names:
            __import__(name)
        return []
    except Exception as exc:  # noqa: BLE001 - ImportError, or protobuf's VersionError
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
    import asyncwebrl.v1 as package

    for name in names:
        module = types.ModuleType(name, f"gpu_check placeholder: the real stubs failed to import ({reason})")
        sys.modules[name] = module
        setattr(package, name.rsplit(".", 1)[1], module)
    return [f"{n} (empty: {reason})" for n in names]


# --- the plan: sizes of each mode ----------------------------------------------------

@dataclasses.dataclass
class Plan:
    mode: str                      # "gpu" or "cpu-smoke"
    device: str
    episodes: int
    steps: tuple[int, int]         # steps per episode, inclusive range
    prompt_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    screenshot: tuple[int, int]    # width, height
    history_window: int
    train_steps: int               # timed steps after one warm-up step
    token_budget: int
    lr: float
    fsdp: bool
    grad_ckpt: bool
    profile_rows: int              # rows of the profiled step (0: no profile)
    concurrency: tuple[int, ...]
    engine_new_tokens: int
    requests_per_slot: int         # requests per level = this x concurrency (at least 2)
    seed: int = 0

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def make_plan(args) -> Plan:
    smoke = args.cpu_smoke
    plan = Plan(
        mode="cpu-smoke" if smoke else "gpu",
        device="cpu" if smoke else args.device,
        episodes=2 if smoke else 8,
        steps=(2, 2) if smoke else (3, 6),
        prompt_tokens=(160, 256) if smoke else (2048, 4096),
        output_tokens=(8, 16) if smoke else (64, 256),
        screenshot=(448, 252) if smoke else (1280, 720),
        history_window=1,
        train_steps=1 if smoke else 2,
        # Alone per micro-batch on the GPU (rows are 2-4k tokens): the fp32 logits of a 16k-token
        # micro-batch over 151,936 ids alone take 10 GB, on top of 60 GB of fp32 AdamW state.
        token_budget=16384 if smoke else 4096,
        # Large enough that three AdamW steps move bf16 weights visibly (the transfer check).
        lr=1e-4,
        fsdp=not args.no_fsdp,
        grad_ckpt=args.grad_ckpt,
        profile_rows=0 if args.no_profile else 2,
        concurrency=(1, 2, 4) if smoke else (1, 8, 32),
        engine_new_tokens=8 if smoke else 64,
        requests_per_slot=2,
    )
    for name in ("episodes", "train_steps", "token_budget", "engine_new_tokens"):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    if args.concurrency:
        plan.concurrency = tuple(args.concurrency)
    return plan


# --- tokenizer, checkpoint, screenshots, rows -----------------------------------------

def special_ids(config=None) -> dict[str, int]:
    """Where the special tokens sit: the real Qwen2.5 ids for the 3B model, 0..8 for the tiny one."""
    from asyncwebrl.common.models.tiny import SPECIAL_TOKENS

    if config is None:
        return {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    text = config.get_text_config()
    return {
        "<|endoftext|>": text.bos_token_id, "<|im_start|>": QWEN_IM_START, "<|im_end|>": text.eos_token_id,
        "<|vision_start|>": config.vision_start_token_id, "<|vision_end|>": config.vision_end_token_id,
        "<|image_pad|>": config.image_token_id, "<|video_pad|>": config.video_token_id,
        "<tool_call>": QWEN_TOOL_CALL, "</tool_call>": QWEN_TOOL_CALL_END,
    }


def synthetic_tokenizer(vocab_size: int, specials: dict[str, int]):
    """A tokenizer with exactly ``vocab_size`` ids, the special tokens at ``specials`` and a
    placeholder word for every other id: no real tokenizer is at hand offline, and prompts are
    drawn as ids, but the engine decodes what it samples and loads a tokenizer like any checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    taken = set(specials.values())
    vocab = {f"<t{i}>": i for i in range(vocab_size) if i not in taken}
    vocab.update(specials)
    unk = next(w for w, i in vocab.items() if i not in taken)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in specials if t not in ("<|im_end|>", "<|endoftext|>")],
    )


def model_config(plan: Plan):
    """(config, tokenizer, image processor) of the mode's model."""
    import transformers

    from asyncwebrl.common.models import tiny

    if plan.mode == "cpu-smoke":
        tokenizer = synthetic_tokenizer(1024, special_ids())
        config = tiny.tiny_config("qwen2_5_vl", tokenizer)
        processor = transformers.Qwen2VLImageProcessorPil(
            patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=tiny.MIN_PIXELS, max_pixels=tiny.MAX_PIXELS)
        return config, tokenizer, processor
    config = transformers.Qwen2_5_VLConfig.from_pretrained(CONFIG_3B)
    tokenizer = synthetic_tokenizer(config.get_text_config().vocab_size, special_ids(config))
    processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(CONFIG_3B)
    return config, tokenizer, processor


def ordinary_ids(specials: dict[str, int], vocab: int) -> tuple[int, int]:
    """The id range prompts and outputs are drawn from: every id below the first special token,
    or above the last one when they sit at the bottom (the tiny layout)."""
    low, high = min(specials.values()), max(specials.values())
    return (0, low) if low > vocab // 2 else (high + 1, vocab)


def write_start_checkpoint(plan: Plan, out: pathlib.Path) -> dict:
    """A complete Hugging Face checkpoint with random weights: what ``load_policy`` reads."""
    import torch
    import transformers

    from asyncwebrl.common.models.loading import MODEL_CLASSES

    transformers.utils.logging.disable_progress_bar()
    config, tokenizer, processor = model_config(plan)
    dtype = torch.bfloat16 if plan.cuda else torch.float32
    t = time.monotonic()
    torch.manual_seed(plan.seed)
    with torch.device(plan.device):
        model = MODEL_CLASSES[config.model_type](config)
    model = model.to(dtype).eval()
    if plan.cuda:
        torch.cuda.synchronize()
    build_s = time.monotonic() - t
    t = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    save_s = time.monotonic() - t
    info = {
        "config": str(CONFIG_3B.relative_to(ROOT)) if plan.mode == "gpu" else "asyncwebrl.common.models.tiny.tiny_config",
        "family": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_language_model": sum(p.numel() for p in model.model.language_model.parameters()),
        "parameters_vision": sum(p.numel() for p in model.model.visual.parameters()),
        "vocab_size": int(config.get_text_config().vocab_size),
        "tie_word_embeddings": bool(model.lm_head.weight is model.model.language_model.embed_tokens.weight),
        "weights": f"random (seed {plan.seed}), written as {str(dtype).removeprefix('torch.')}",
        "start_checkpoint_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
        "build_s": round(build_s, 2),
        "save_s": round(save_s, 2),
        "tokenizer": f"placeholder word-level tokenizer of {len(tokenizer)} ids, the special tokens at the ids "
                     "the config names (no real tokenizer offline; prompt and output ids are drawn at random)",
    }
    del model
    gc.collect()
    if plan.cuda:
        torch.cuda.empty_cache()
    return info


def screenshot_bytes(seed: int, size: tuple[int, int]) -> bytes:
    """A page-like screenshot (flat regions and boxes, not noise), JPEG q80 as envfleet stores them."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    w, h = size
    img = np.full((h, w, 3), 245, np.uint8)
    for _ in range(24):
        y, x = rng.randint(0, max(1, h - 40)), rng.randint(0, max(1, w - 80))
        img[y:y + rng.randint(10, 60), x:x + rng.randint(40, 300)] = rng.randint(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Screens:
    """Screenshots by key, decoded and processed with the project's image code, and the trainer's
    ``ImageResolver``: refs -> (pixel_values, image_grid_thw) of those screenshots, in order."""

    def __init__(self, processor, size: tuple[int, int]) -> None:
        self.processor = processor
        self.size = size
        self.batches: dict[str, object] = {}

    def key(self, seed: int) -> str:
        from asyncwebrl.common.agent.vision import decode_image, process_images

        key = f"{seed:064x}"
        if key not in self.batches:
            self.batches[key] = process_images(self.processor, [decode_image(screenshot_bytes(seed, self.size))])
        return key

    def tokens(self, key: str) -> int:
        return self.batches[key].token_counts[0]

    def grids(self, refs) -> list[tuple[int, int, int]]:
        return [tuple(int(x) for x in self.batches[k].grid_thw[0]) for k in refs]

    def __call__(self, refs):
        import numpy as np

        parts = [self.batches[k] for k in refs]
        return np.concatenate([p.pixel_values for p in parts]), np.concatenate([p.grid_thw for p in parts])


def make_rows(plan: Plan, screens: Screens, specials: dict[str, int], vocab: int, seed: int):
    """One GRPO group: ``plan.episodes`` episodes of one task with 0/1 rewards, one row per step, as
    ``rows_from_groups`` makes them (constant 1/k step advantage, k = 10)."""
    import numpy as np

    from asyncwebrl.trainer.algorithm import group_advantages, step_advantage
    from asyncwebrl.trainer.batching import Row

    rng = np.random.RandomState(seed)
    low, high = ordinary_ids(specials, vocab)
    rewards = [float(i % 2) for i in range(plan.episodes)]  # half succeed: a group with signal
    advantages = group_advantages(rewards).tolist()
    rows = []
    for e in range(plan.episodes):
        n_steps = int(rng.randint(plan.steps[0], plan.steps[1] + 1))
        shots = [screens.key(seed * 100_003 + e * 1_000 + j) for j in range(n_steps)]
        for j in range(n_steps):
            shown = shots[max(0, j - plan.history_window): j + 1]
            image_tokens = sum(screens.tokens(k) for k in shown)
            total = int(rng.randint(plan.prompt_tokens[0], plan.prompt_tokens[1] + 1))
            text = max(32, total - image_tokens - 2 * len(shown) - 4)
            # System prompt and instruction, then each screenshot, then the history, as render() lays out.
            first = text // 2
            ids = [specials["<|im_start|>"], *rng.randint(low, high, size=first).tolist()]
            for k in shown:
                ids += [specials["<|vision_start|>"]] + [specials["<|image_pad|>"]] * screens.tokens(k) \
                    + [specials["<|vision_end|>"]]
            ids += rng.randint(low, high, size=text - first).tolist()
            ids += [specials["<|im_end|>"], specials["<|im_start|>"], int(rng.randint(low, high))]
            n_out = int(rng.randint(plan.output_tokens[0], plan.output_tokens[1] + 1))
            out = rng.randint(low, high, size=n_out).tolist()
            # A random-weight model is close to uniform: behaviour logprobs near -log(V), a little off-policy.
            behav = (-math.log(vocab) + rng.normal(0.0, 0.05, size=n_out)).tolist()
            rows.append(Row(ids, out, behav, [0] * n_out, step_advantage(advantages[e], n_steps, "constant", 10.0),
                            shown, "g0", f"e{e}", bool(rewards[e])))
    return rows


# --- FLOPs -----------------------------------------------------------------------------

FLOPS_FORMULA = (
    "model FLOPs of one forward pass, summed over rows: 2*N_lm*s + 2*L*d*s^2 for the language model "
    "(s = prompt + output tokens of the row, image placeholders included; N_lm = decoder parameters "
    "without the input embedding, plus the vocab x hidden output projection; causal attention counted "
    "as half of QK^T and AV: 2*s^2*d per layer) and, per image of P patches, 2*N_vit*P + 2*N_merger*P/4 "
    "+ 4*d_v*(n_full*P^2 + n_window*sum(w^2)) for the vision tower (full-attention blocks over the image, "
    "windowed blocks over windows of w patches). A training pass is 3x its forward (backward = 2x), the "
    "proximal pass 1x; recomputation (gradient checkpointing) is not counted. MFU = FLOPs per step / "
    "median step seconds / the GPU's dense bf16 peak."
)


def model_shape(model) -> dict:
    """The numbers the FLOP count needs, read off the (unsharded or sharded) model."""
    cfg = model.config
    text, vision = cfg.get_text_config(), cfg.vision_config
    lm = model.model.language_model
    embed = lm.embed_tokens.weight
    n_lm = sum(p.numel() for p in lm.parameters()) - embed.numel() + text.vocab_size * text.hidden_size
    visual = model.model.visual
    n_merger = sum(p.numel() for p in visual.merger.parameters())
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return {
        "n_lm": n_lm, "n_vit": sum(p.numel() for p in visual.parameters()) - n_merger, "n_merger": n_merger,
        "layers": text.num_hidden_layers, "d_attn": heads * head_dim,
        "vision_depth": vision.depth, "d_vision": vision.hidden_size,
        "vision_full_blocks": len(getattr(vision, "fullatt_block_indexes", []) or []),
        "merge": vision.spatial_merge_size,
        "window_merged": max(1, vision.window_size // vision.spatial_merge_size // vision.patch_size),
    }


def image_forward_flops(shape: dict, grid: tuple[int, int, int]) -> float:
    t, h, w = grid
    patches = t * h * w
    m = shape["merge"]
    hm, wm, win = h // m, w // m, shape["window_merged"]
    window_sq = 0
    for i in range(0, hm, win):
        for j in range(0, wm, win):
            window_sq += (t * min(win, hm - i) * min(win, wm - j) * m * m) ** 2
    n_full = shape["vision_full_blocks"]
    n_window = shape["vision_depth"] - n_full
    return (2 * shape["n_vit"] * patches + 2 * shape["n_merger"] * patches / (m * m)
            + 4 * shape["d_vision"] * (n_full * patches ** 2 + n_window * window_sq))


def row_forward_flops(shape: dict, tokens: int, grids) -> tuple[float, float]:
    """(language model, vision) forward FLOPs of one row."""
    lm = 2 * shape["n_lm"] * tokens + 2 * shape["layers"] * shape["d_attn"] * tokens ** 2
    return lm, sum(image_forward_flops(shape, g) for g in grids)


def peak_bf16(name: str) -> tuple[float | None, str]:
    upper = name.upper()
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in upper:
            return tflops * 1e12, f"{key}: {tflops} TFLOP/s dense bf16 (data sheet)"
    return None, f"no dense bf16 peak known for {name!r}: MFU left null"


# --- checks shared by both processes ----------------------------------------------------

def checksums(model, dtype) -> dict[str, list[float]]:
    """Per tensor: the float64 sum and sum of squares of its values cast to ``dtype`` (the
    engine's): what a version carries from the trainer to the engine, compared name by name."""
    import torch

    out = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            x = tensor.detach().to(dtype).double()
            out[name] = [float(x.sum()), float((x * x).sum())]
            del x
    return out


def compare_checksums(a: dict, b: dict) -> dict:
    names = sorted(set(a) | set(b))
    differ = [n for n in names if n not in a or n not in b
              or any(abs(x - y) > 1e-9 * max(1.0, abs(x)) for x, y in zip(a[n], b[n]))]
    return {"tensors": len(names), "differ": len(differ), "first_differing": differ[:5]}


def probe_logprobs(model, sample) -> list[float]:
    import torch

    from asyncwebrl.common.models.logprobs import output_logprobs

    with torch.no_grad():
        return [float(x) for x in output_logprobs(model, [sample])[0].float().cpu()]


def probe_sample(rows, screens):
    from asyncwebrl.common.models.logprobs import Sample

    row = rows[0]
    pixel_values, grid = screens(row.screenshots)
    return Sample(row.prompt_ids, row.output_ids, pixel_values, grid)


# --- machine and versions ----------------------------------------------------------------

def machine_info(plan: Plan) -> dict:
    import numpy
    import safetensors
    import torch
    import transformers

    info = {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__, "numpy": numpy.__version__},
        "gpu": None,
        "env": {k: os.environ[k] for k in ("PYTORCH_CUDA_ALLOC_CONF", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                                           "NCCL_DEBUG") if k in os.environ},
    }
    if plan.cuda:
        props = torch.cuda.get_device_properties(plan.device)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count}
        info["versions"]["cudnn"] = torch.backends.cudnn.version()
        try:
            info["versions"]["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
        except Exception:  # noqa: BLE001 - informational
            pass
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["versions"]["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except Exception:  # noqa: BLE001 - informational
            info["versions"]["driver"] = None
    return info


def matmul_tflops(device: str) -> float:
    """What this GPU's bf16 matrix product reaches here (8192^3, mean of 10 after 3 warm-ups)."""
    import torch

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


def pick_workdir(plan: Plan, requested: str | None, need_bytes: int) -> pathlib.Path:
    if requested:
        path = pathlib.Path(requested)
        path.mkdir(parents=True, exist_ok=True)
        return pathlib.Path(tempfile.mkdtemp(prefix="gpu_check-", dir=path))
    for base in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(base) and os.access(base, os.W_OK) and shutil.disk_usage(base).free > 1.2 * need_bytes:
            return pathlib.Path(tempfile.mkdtemp(prefix="gpu_check-", dir=base))
    raise RuntimeError(f"no folder with {need_bytes / 1e9:.1f} GB free for the checkpoints: pass --workdir")


# --- the trainer process ------------------------------------------------------------------

class OneProcessGroup:
    """The trainer's multi-process path on a group of one: ``Learner`` shards with FSDP2 and
    every collective runs (NCCL on CUDA, gloo on the CPU), as on 8 GPUs."""

    @staticmethod
    def make(device: str):
        import torch
        import torch.distributed as dist

        from asyncwebrl.trainer.dist import Dist

        class _Group(Dist):
            @property
            def distributed(self) -> bool:
                return True

        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                    world_size=1)
        return _Group(rank=0, world=1, local_rank=0, device=dev)


def sync(plan: Plan) -> None:
    if plan.cuda:
        import torch

        torch.cuda.synchronize()


def memory(plan: Plan) -> dict:
    import torch

    if plan.cuda:
        return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                "device_total_gib": round(torch.cuda.get_device_properties(plan.device).total_memory / 2**30, 2)}
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def enable_grad_ckpt(model) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def profile_step(plan: Plan, learner, rows, screens) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if plan.cuda else [])
    t = time.monotonic()
    with profile(activities=activities) as prof:
        learner.train(rows, screens)
        sync(plan)
    seconds = time.monotonic() - t
    attr = "self_device_time_total" if plan.cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    events.sort(key=lambda e: getattr(e, attr, 0), reverse=True)
    total = sum(getattr(e, attr, 0) for e in events) or 1
    return {
        "rows": len(rows), "seconds_with_profiler": round(seconds, 2),
        "sorted_by": attr, "total_ms": round(total / 1e3, 1),
        "top_ops": [{"name": e.key[:80], "calls": e.count, "self_ms": round(getattr(e, attr) / 1e3, 2),
                     "share": round(getattr(e, attr) / total, 4)} for e in events[:25]],
    }


def train_phase(plan: Plan, results: dict, start: pathlib.Path, ckpt: pathlib.Path, save) -> dict:
    """Load the learner and time its training step; returns what the later phases need."""
    import torch

    from asyncwebrl.trainer.config import TrainerConfig
    from asyncwebrl.trainer.dist import Dist
    from asyncwebrl.trainer.learner import Learner

    train: dict = results.setdefault("train", {})
    d = OneProcessGroup.make(plan.device) if plan.fsdp else Dist(device=torch.device(plan.device))
    master = "float32" if plan.fsdp else ("bfloat16" if plan.cuda else "float32")
    config = TrainerConfig(model_path=str(start), checkpoint_dir=str(ckpt), device="cuda" if plan.cuda else "cpu",
                           dtype=master, compute_dtype="auto", lr=plan.lr, token_budget=plan.token_budget,
                           keep_versions=2, seed=plan.seed)
    train["setup"] = {
        "code": "asyncwebrl.trainer.learner.Learner.train -> asyncwebrl.trainer.step.train_step",
        "sharding": ("FSDP2 (asyncwebrl.trainer.dist.shard: one unit per decoder layer and vision block) on a "
                     f"process group of one ({'nccl' if plan.cuda else 'gloo'})") if plan.fsdp else "none (one process)",
        "master_dtype": master,
        "compute_dtype": ("bfloat16" if plan.cuda else "float32") if plan.fsdp else master,
        "attention": "sdpa (as asyncwebrl.common.models.loading loads every model)",
        "token_budget": plan.token_budget, "epochs": config.epochs, "minibatches": config.minibatches,
        "lr": plan.lr, "lr_note": "large, so that three AdamW steps visibly move bf16 weights (the transfer check)",
        "gradient_checkpointing": plan.grad_ckpt,
    }
    t = time.monotonic()
    learner = Learner(config, d)
    sync(plan)
    train["load_s"] = round(time.monotonic() - t, 2)
    log(f"learner loaded in {train['load_s']} s ({train['setup']['sharding']})")
    if plan.grad_ckpt:
        enable_grad_ckpt(learner.model)
    shape = model_shape(learner.model)

    processor = learner.policy.image_processor  # read from the checkpoint, as the trainer does
    screens = Screens(processor, plan.screenshot)
    specials = special_ids(None if plan.mode == "cpu-smoke" else learner.model.config)
    vocab = learner.vocab_size
    t = time.monotonic()
    rows = make_rows(plan, screens, specials, vocab, seed=plan.seed + 1)
    prompt = [len(r.prompt_ids) for r in rows]
    output = [len(r.output_ids) for r in rows]
    images = sum(len(r.screenshots) for r in rows)
    passes = 1 + config.epochs  # the proximal pass and each PPO epoch
    tokens = sum(r.tokens for r in rows)
    fwd_lm = fwd_vision = 0.0
    for r in rows:
        lm, vision = row_forward_flops(shape, r.tokens, screens.grids(r.screenshots))
        fwd_lm, fwd_vision = fwd_lm + lm, fwd_vision + vision
    flops_step = (fwd_lm + fwd_vision) * (1 + 3 * config.epochs)
    first = next(iter(screens.batches.values()))
    train["batch"] = {
        "episodes": plan.episodes, "rows": len(rows), "groups": 1,
        "prompt_tokens": {"min": min(prompt), "mean": round(statistics.fmean(prompt)), "max": max(prompt)},
        "output_tokens": {"min": min(output), "mean": round(statistics.fmean(output)), "max": max(output)},
        "images": images, "screenshot": f"{plan.screenshot[0]}x{plan.screenshot[1]} JPEG q80",
        "image_tokens_per_screenshot": int(first.token_counts[0]),
        "patches_per_screenshot": int(first.pixel_values.shape[0]),
        "tokens_per_pass": tokens, "passes_per_step": passes, "tokens_per_step": tokens * passes,
        "build_s": round(time.monotonic() - t, 2),
    }
    results["image_processor"] = {"min_pixels": int(processor.size["shortest_edge"]),
                                  "max_pixels": int(processor.size["longest_edge"]),
                                  "patch_size": int(processor.patch_size), "merge_size": int(processor.merge_size)}
    log(f"batch: {len(rows)} rows, prompts {min(prompt)}-{max(prompt)} tokens, {images} images "
        f"({train['batch']['image_tokens_per_screenshot']} tokens each), {tokens} tokens per pass")
    save()

    if plan.cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.monotonic()
    try:
        learner.train(rows, screens)
        sync(plan)
    except torch.OutOfMemoryError as exc:
        if plan.grad_ckpt:
            raise
        log(f"warm-up step ran out of memory ({str(exc)[:120]}); again with gradient checkpointing")
        train["fallback"] = f"out of memory without gradient checkpointing: {str(exc)[:300]}"
        learner.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        enable_grad_ckpt(learner.model)
        plan.grad_ckpt = train["setup"]["gradient_checkpointing"] = True
        learner.train(rows, screens)
        sync(plan)
    train["warmup_s"] = round(time.monotonic() - t, 2)
    log(f"warm-up step: {train['warmup_s']} s")
    steps = []
    for i in range(plan.train_steps):
        t = time.monotonic()
        m = learner.train(rows, screens)
        sync(plan)
        seconds = time.monotonic() - t
        steps.append({"seconds": round(seconds, 3), "proximal_s": round(m.seconds_proximal, 3),
                      "forward_backward_s": round(m.seconds_forward_backward, 3),
                      "optimizer_s": round(m.seconds_optimizer, 3), "micro_batches": m.micro_batches,
                      "loss": m.loss, "grad_norm": m.grad_norm, "clip_fraction": m.clip_fraction,
                      "cap_fraction": m.cap_fraction})
        log(f"step {i + 1}/{plan.train_steps}: {seconds:.2f} s, {tokens * passes / seconds:,.0f} tokens/s, "
            f"grad norm {m.grad_norm:.3g}")
    step_s = statistics.median(s["seconds"] for s in steps)
    train["steps"] = steps
    train["step_s"] = round(step_s, 3)
    train["tokens_per_s"] = round(tokens * passes / step_s, 1)
    train["tokens_per_s_note"] = "prompt + output tokens through the model, counted once per pass (bench/trainer.py)"
    train["memory"] = memory(plan)
    peak, peak_source = peak_bf16(results["machine"]["gpu"]["name"]) if plan.cuda else (None, "CPU: no bf16 peak")
    achieved = flops_step / step_s
    train["flops"] = {
        "formula": FLOPS_FORMULA, "shape": shape,
        "forward_language_model": fwd_lm, "forward_vision": fwd_vision, "per_step": flops_step,
        "achieved_tflops": round(achieved / 1e12, 2), "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": peak_source,
    }
    train["mfu"] = round(achieved / peak, 4) if peak else None
    if plan.cuda:
        mm = matmul_tflops(plan.device)
        train["flops"]["measured_matmul_tflops"] = round(mm, 1)
        train["mfu_vs_measured_matmul"] = round(achieved / (mm * 1e12), 4)
    log(f"train: {train['tokens_per_s']:,} tokens/s, {train['flops']['achieved_tflops']} TFLOP/s, MFU {train['mfu']}, "
        f"memory {train['memory']}")
    save()

    # What the engine must hold after the transfer, computed before the optimizer state is freed.
    engine_dtype = torch.bfloat16 if plan.cuda else torch.float32
    t = time.monotonic()
    sample = probe_sample(rows, screens)
    trainer_sums = checksums(learner.model, engine_dtype)
    trainer_probe = probe_logprobs(learner.model, sample)
    log(f"trainer checksums and probe logprobs in {time.monotonic() - t:.1f} s")
    learner.optimizer.state.clear()
    learner.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if plan.cuda:
        torch.cuda.empty_cache()
    return {"learner": learner, "sums": trainer_sums, "probe": trainer_probe, "sample": sample, "d": d,
            "specials": specials, "vocab": vocab, "rows": rows, "screens": screens}


def profile_phase(plan: Plan, results: dict, state: dict) -> None:
    """A diagnostic, last so that it cannot eat the time of the measurements: one training step on
    a few rows under the PyTorch profiler, its operators by device time (CPU time on the CPU)."""
    train = results["train"]
    left = TIME_BUDGET_S[plan.mode] - (time.monotonic() - _T0)
    if not plan.profile_rows:
        return
    if plan.cuda and left < 2 * train["step_s"] * plan.profile_rows / len(state["rows"]) + 30:
        train["profile"] = {"skipped": f"{left:.0f} s of the time budget left"}
        return
    try:
        train["profile"] = profile_step(plan, state["learner"], state["rows"][: plan.profile_rows], state["screens"])
        top = train["profile"]["top_ops"][:3]
        log("profiled step: " + ", ".join(f"{o['name']} {o['share']:.0%}" for o in top))
    except Exception as exc:  # noqa: BLE001 - the profile is a diagnostic
        train["profile"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def transfer_phase(plan: Plan, results: dict, state: dict, start: pathlib.Path, work: pathlib.Path, save) -> None:
    """Start the engine process, let it measure generation, then hand it version 1."""
    import torch

    from asyncwebrl.common import weights

    learner = state["learner"]
    probe_path = work / "probe.pt"
    torch.save({"prompt_ids": state["sample"].prompt_ids, "output_ids": state["sample"].output_ids,
                "pixel_values": torch.as_tensor(state["sample"].pixel_values),
                "image_grid_thw": torch.as_tensor(state["sample"].image_grid_thw)}, probe_path)
    spec = {"plan": dataclasses.asdict(plan), "start": str(start), "probe": str(probe_path),
            "specials": state["specials"], "vocab": state["vocab"]}
    spec_path = work / "engine_spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), "--engine-worker", str(spec_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    replies: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            if line.startswith(PROTOCOL):
                replies.put(json.loads(line[len(PROTOCOL):]))
        replies.put({"event": "exit"})

    threading.Thread(target=read, daemon=True).start()

    def expect(event: str, timeout: float) -> dict:
        try:
            msg = replies.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"engine process: no {event} within {timeout:.0f} s") from None
        if msg.get("event") == "error":
            raise RuntimeError(f"engine process: {msg['error']}")
        if msg.get("event") != event:
            raise RuntimeError(f"engine process: expected {event}, got {msg.get('event')} (exit code {proc.poll()})")
        return msg

    try:
        ready = expect("ready", 900)
        results["engine"] = ready["engine"]
        save()
        t = time.monotonic()
        manifest = learner.write_version(1)
        write_s = time.monotonic() - t
        path = weights.version_dir(learner.root, 1)
        log(f"trainer wrote version 1 ({manifest.total_bytes / 1e9:.2f} GB) in {write_s:.1f} s")
        proc.stdin.write(json.dumps({"path": str(path), "version": "1"}) + "\n")
        proc.stdin.flush()
        loaded = expect("loaded", 900)
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    weight_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    total_s = write_s + loaded["verify_s"] + loaded["load_s"]
    match = compare_checksums(state["sums"], loaded["sums_after"])
    changed = compare_checksums(loaded["sums_before"], loaded["sums_after"])
    probe_diff = max((abs(a - b) for a, b in zip(state["probe"], loaded["probe"])), default=float("nan"))
    results["transfer"] = {
        "path": "disk: the trainer process writes v<N>/ (Learner.write_version: gather, safetensors, manifest "
                "with sha256); the manifest is verified (weights.read_manifest, what weightsync does once per "
                "publish; timed here in the engine process) and the running engine process loads it "
                "(Engine.update_weights, what /update_weights_from_disk runs). The NCCL broadcast path "
                "(update_weights_from_distributed, docs/weightsync.md) does not exist yet.",
        "folder": str(path.parent),
        "bytes": loaded["bytes"], "checkpoint_bytes": weight_bytes, "manifest_bytes": manifest.total_bytes,
        "dtype_written": learner.config.dtype,
        "write_s": round(write_s, 3), "verify_s": round(loaded["verify_s"], 3), "load_s": round(loaded["load_s"], 3),
        "total_s": round(total_s, 3),
        "gb_per_s": round(weight_bytes / total_s / 1e9, 3),
        "gb_per_s_write": round(weight_bytes / write_s / 1e9, 3),
        "gb_per_s_load": round(weight_bytes / loaded["load_s"] / 1e9, 3),
        "engine_version_after": loaded["served_versions"],
        "weights": {"compared": match["tensors"], "differ_from_trainer": match["differ"],
                    "first_differing": match["first_differing"], "changed_by_update": changed["differ"],
                    "method": "per-tensor float64 sum and sum of squares of the values in the engine's dtype"},
        "probe_logprob_max_abs_diff": probe_diff,
        "probe_tokens": len(state["probe"]),
    }
    results["checks"] = {
        "engine_weights_equal_trainer": match["differ"] == 0,
        "update_changed_engine_weights": changed["differ"] > 0,
        "transfer_bytes_equal_checkpoint": loaded["bytes"] == weight_bytes,
        "engine_serves_new_version": set(loaded["served_versions"]) == {"1"},
        "probe_logprobs_close": probe_diff < (0.1 if plan.cuda else 1e-3),
    }
    log(f"transfer: {weight_bytes / 1e9:.2f} GB in {total_s:.1f} s ({results['transfer']['gb_per_s']} GB/s; "
        f"write {write_s:.1f} s, verify {loaded['verify_s']:.1f} s, load {loaded['load_s']:.1f} s); "
        f"weights equal: {match['differ'] == 0}, probe max |diff| {probe_diff:.2e}")


# --- the engine process ------------------------------------------------------------------

def engine_worker(spec_path: str) -> int:
    def send(msg: dict) -> None:
        sys.stdout.write(PROTOCOL + json.dumps(msg) + "\n")
        sys.stdout.flush()

    try:
        return _engine_worker(json.loads(pathlib.Path(spec_path).read_text()), send)
    except Exception as exc:  # noqa: BLE001 - reported to the trainer process
        traceback.print_exc()
        send({"event": "error", "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        return 1


def _engine_worker(spec: dict, send) -> int:
    import torch

    from asyncwebrl.common import weights
    from asyncwebrl.common.models.loading import load_policy
    from asyncwebrl.common.models.logprobs import Sample
    from asyncwebrl.engine.core import Engine, GenRequest, SamplingParams

    placeholders = import_protobuf_stubs()
    spec["plan"]["steps"] = tuple(spec["plan"]["steps"])
    plan = Plan(**spec["plan"])
    info: dict = {"code": "asyncwebrl.engine.core.Engine (continuous batching, one KV cache), in its own process",
                  "placeholders": placeholders}
    t = time.monotonic()
    policy = load_policy(spec["start"], device=plan.device, dtype="auto")
    dtype = next(policy.model.parameters()).dtype
    sync(plan)
    info["load_s"] = round(time.monotonic() - t, 2)
    info["dtype"] = str(dtype).removeprefix("torch.")
    log(f"policy loaded in {info['load_s']} s ({info['dtype']} on {plan.device})", worker=True)
    engine = Engine(policy, weight_version="0", max_batch_size=max(plan.concurrency), seed=plan.seed)
    engine.start()
    screens = Screens(policy.image_processor, plan.screenshot)
    rows = make_rows(plan, screens, spec["specials"], spec["vocab"], seed=plan.seed + 2)
    inputs = []
    for r in rows:
        pixel_values, grid = screens(r.screenshots)
        inputs.append((r.prompt_ids, torch.from_numpy(pixel_values), torch.from_numpy(grid)))

    def level(c: int, n: int, new_tokens: int) -> dict:
        done: queue.Queue = queue.Queue()
        submitted = 0

        def delivered(r) -> None:  # on the engine thread, as the request finishes
            r.done_at = time.monotonic()
            done.put(r)

        def submit() -> None:
            nonlocal submitted
            ids, pixel_values, grid = inputs[submitted % len(inputs)]
            engine.submit(GenRequest(
                rid=f"c{c}-{submitted}", input_ids=list(ids),
                params=SamplingParams(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True),
                return_logprob=True, on_done=delivered, pixel_values=pixel_values, image_grid_thw=grid))
            submitted += 1

        started = time.monotonic()
        for _ in range(min(c, n)):
            submit()
        finished = []
        while len(finished) < n:
            r = done.get(timeout=600)
            if r.finish is None or r.finish.get("type") == "abort":
                raise RuntimeError(f"request {r.rid} ended {r.finish}")
            finished.append(r)
            if submitted < n:
                submit()
        wall = time.monotonic() - started
        ttft = sorted(r.first_token_at - r.created for r in finished)
        generated = sum(len(r.output_ids) for r in finished)
        return {
            "in_flight": c, "requests": n, "generated_tokens": generated,
            "prompt_tokens_mean": round(statistics.fmean(len(r.input_ids) for r in finished)),
            "wall_s": round(wall, 3), "tokens_per_s": round(generated / wall, 1),
            "ttft_median_s": round(statistics.median(ttft), 4), "ttft_p90_s": round(ttft[math.ceil(0.9 * len(ttft)) - 1], 4),
            "e2e_median_s": round(statistics.median(r.done_at - r.created for r in finished), 4),
            "versions": sorted({v for r in finished for v in r.versions}),
        }

    t = time.monotonic()
    level(2, 2, 4)  # warm-up: kernels, allocator, a batch merge
    info["warmup_s"] = round(time.monotonic() - t, 2)
    info["new_tokens_per_request"] = plan.engine_new_tokens
    info["sampling"] = "temperature 1, ignore_eos, return_logprob; closed loop: a new request as each one finishes"
    info["levels"] = {}
    for c in plan.concurrency:
        n = max(2, plan.requests_per_slot * c)
        result = level(c, n, plan.engine_new_tokens)
        info["levels"][str(c)] = result
        log(f"{c} in flight: {result['tokens_per_s']:,} tokens/s, TTFT median {result['ttft_median_s']} s "
            f"({n} requests, prompts ~{result['prompt_tokens_mean']} tokens)", worker=True)
    if plan.cuda:
        info["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    info["asyncwebrl_modules"] = sorted(m for m in sys.modules if m.startswith("asyncwebrl"))
    sums_before = engine.command(lambda: checksums(policy.model, dtype)).result()
    send({"event": "ready", "engine": info})

    line = sys.stdin.readline()
    if not line:
        raise RuntimeError("the trainer process closed the pipe before sending a version")
    order = json.loads(line)
    t = time.monotonic()
    manifest = weights.read_manifest(order["path"], verify=True)
    verify_s = time.monotonic() - t
    t = time.monotonic()
    loaded = engine.command(lambda: engine.update_weights(order["path"], order["version"], abort_all=False)).result()
    sync(plan)
    load_s = time.monotonic() - t
    log(f"version {manifest.version} verified in {verify_s:.1f} s, loaded in {load_s:.1f} s", worker=True)
    probe = torch.load(spec["probe"], weights_only=True)
    sample = Sample(probe["prompt_ids"], probe["output_ids"], probe["pixel_values"], probe["image_grid_thw"])
    sums_after = engine.command(lambda: checksums(policy.model, dtype)).result()
    logps = engine.command(lambda: probe_logprobs(policy.model, sample)).result()
    after = level(1, 1, 4)
    engine.stop()
    send({"event": "loaded", "bytes": loaded["bytes"], "verify_s": verify_s, "load_s": load_s,
          "sums_before": sums_before, "sums_after": sums_after, "probe": logps, "served_versions": after["versions"]})
    return 0


# --- main -------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on a tiny model on the CPU (< 1 min)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file written (default: gpu_check.json)")
    parser.add_argument("--device", default="cuda", help="CUDA device of the GPU run (default: cuda)")
    parser.add_argument("--workdir", help="where checkpoints go (default: /dev/shm when it has room, else the "
                                          "temporary folder)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the checkpoints written")
    parser.add_argument("--episodes", type=int, help="episodes in the training batch (default 8; smoke 2)")
    parser.add_argument("--train-steps", type=int, help="timed training steps after the warm-up (default 2)")
    parser.add_argument("--token-budget", type=int, help="padded tokens per micro-batch (default 4096; smoke 16384)")
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing from the start (otherwise "
                                                                  "only after an out-of-memory warm-up step)")
    parser.add_argument("--no-fsdp", action="store_true", help="one plain process, bf16 master weights, no FSDP2")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled training step")
    parser.add_argument("--concurrency", type=int, nargs="+", help="engine requests in flight (default 1 8 32)")
    parser.add_argument("--engine-new-tokens", type=int, help="tokens generated per request (default 64; smoke 8)")
    parser.add_argument("--engine-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_worker:
        return engine_worker(args.engine_worker)

    plan = make_plan(args)
    out = pathlib.Path(args.out)
    results: dict = {
        "check": "gpu_check", "mode": plan.mode, "command": " ".join(["python3", "scripts/gpu_check.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False, "ok": False, "errors": [],
    }

    def save() -> None:
        results["elapsed_s"] = round(time.monotonic() - _T0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(out)

    import torch

    if plan.cuda and not torch.cuda.is_available():
        results["errors"].append("no CUDA device here: run with --cpu-smoke on a machine without a GPU")
        save()
        print(json.dumps(results))
        return 2
    placeholders = import_protobuf_stubs()
    results["imports"] = {
        "sources": [str(p.relative_to(ROOT)) for p in SOURCES],
        "placeholders": placeholders,
        "asyncwebrl_modules": sorted(m for m in sys.modules if m.startswith("asyncwebrl")),
    }
    results["machine"] = machine_info(plan)
    if plan.cuda:
        log(f"{results['machine']['gpu']['name']}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    work = None
    try:
        import transformers

        params = 4.0e9 if plan.mode == "gpu" else 1e7
        work = pick_workdir(plan, args.workdir, int(params * 7))  # bf16 start + fp32 version + slack
        results["workdir"] = str(work)
        start = work / "start"
        results["model"] = write_start_checkpoint(plan, start)
        results["model"]["transformers"] = transformers.__version__
        log(f"start checkpoint: {results['model']['parameters']:,} parameters, built in "
            f"{results['model']['build_s']} s, written in {results['model']['save_s']} s to {work}")
        save()
        state = None
        try:
            state = train_phase(plan, results, start, work / "checkpoints", save)
        except Exception as exc:  # noqa: BLE001 - recorded; the engine phase cannot run without versions
            traceback.print_exc()
            results["errors"].append(f"train: {type(exc).__name__}: {str(exc)[:500]}")
        if state is None and plan.fsdp and not results.get("train", {}).get("steps"):
            # One run of this script may be all the GPU time there is: measure the rest without FSDP2.
            log("training under FSDP2 failed; again in one plain process (bf16 master weights)")
            gc.collect()
            if plan.cuda:
                torch.cuda.empty_cache()
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            results["train_fsdp_attempt"] = results.pop("train", {})
            plan.fsdp = False
            try:
                state = train_phase(plan, results, start, work / "checkpoints-no-fsdp", save)
            except Exception as exc:  # noqa: BLE001 - recorded
                traceback.print_exc()
                results["errors"].append(f"train without FSDP2: {type(exc).__name__}: {str(exc)[:500]}")
        save()
        if state is not None:
            try:
                transfer_phase(plan, results, state, start, work, save)
            except Exception as exc:  # noqa: BLE001 - recorded
                traceback.print_exc()
                results["errors"].append(f"engine/transfer: {type(exc).__name__}: {str(exc)[:500]}")
            save()
            profile_phase(plan, results, state)
            state["d"].close()
    except Exception as exc:  # noqa: BLE001 - the start checkpoint: recorded, nothing else can run
        traceback.print_exc()
        results["errors"].append(f"setup: {type(exc).__name__}: {str(exc)[:500]}")
    finally:
        if work is not None and not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
    results["imports"]["asyncwebrl_modules"] = sorted(m for m in sys.modules if m.startswith("asyncwebrl"))
    results["imports"]["not_imported"] = sorted(
        m for m in ("grpc", "redis", "pydantic", "fastapi", "aiohttp", "google.protobuf") if m not in sys.modules)
    budget = TIME_BUDGET_S[plan.mode]
    results["time_budget_s"] = budget
    results["within_time_budget"] = time.monotonic() - _T0 <= budget
    results["complete"] = True
    results["ok"] = not results["errors"] and all(results.get("checks", {"ran": False}).values())
    save()
    log(f"done in {results['elapsed_s']} s; ok: {results['ok']}; wrote {out}")
    print(json.dumps(results))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
