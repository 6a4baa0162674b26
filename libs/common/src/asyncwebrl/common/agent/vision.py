"""Screenshots into model inputs: decoding with bounds, patching, image token counts.

Built on ``Qwen2VLImageProcessorPil`` (the Qwen processor class needs
torchvision, absent here); Qwen3-VL uses the same processing with 16-pixel
patches. No torch import: the rollout gateway counts image tokens without it.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image

MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_IMAGE_SIDE = 8192
FORMATS = ("PNG", "JPEG", "WEBP")


class BadImage(ValueError):
    pass


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> RGB image, or BadImage with the reason. Bounded before decoding."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise BadImage("empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(f"image of {len(data)} bytes is over {MAX_IMAGE_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise BadImage(f"image format {image.format} is not one of {FORMATS}")
            w, h = image.size
            if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
                raise BadImage(f"image size {w}x{h} outside 1-{MAX_IMAGE_SIDE} per side")
            image.load()
    except BadImage:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on bad input
        raise BadImage(f"image does not decode: {type(exc).__name__}: {str(exc)[:100]}") from exc
    return image.convert("RGB")


@dataclasses.dataclass
class ImageBatch:
    pixel_values: np.ndarray  # (patches, channels * temporal * patch * patch)
    grid_thw: np.ndarray      # (images, 3)
    token_counts: list[int]   # image placeholder tokens per image, in order


def load_processors(path):
    """A checkpoint directory's tokenizer and image processor, never downloaded."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
    return tokenizer, processor


def image_tokens(processor, height: int, width: int) -> int:
    """How many placeholder tokens an image of this size takes in the prompt (no decoding needed)."""
    merge = int(processor.merge_size)
    return processor.get_number_of_image_patches(height, width, {}) // (merge * merge)


def process_images(processor, images: list[Image.Image]) -> ImageBatch:
    if not images:
        return ImageBatch(np.zeros((0, 0), np.float32), np.zeros((0, 3), np.int64), [])
    out = processor(images=images, return_tensors="np")
    grid = np.asarray(out["image_grid_thw"], dtype=np.int64)
    merge = int(processor.merge_size)
    counts = [int(t * h * w) // (merge * merge) for t, h, w in grid]
    return ImageBatch(np.asarray(out["pixel_values"], dtype=np.float32), grid, counts)
