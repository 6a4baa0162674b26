"""The Redis key layout, in one place so every service agrees on it."""

from __future__ import annotations

import re

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


def blob_key(prefix: str, sha256: str) -> str:
    """Screenshot blob (hash with fields data, mime, width, height, size)."""
    return f"{prefix}blob:{sha256}"
