"""Validation of agent actions: proto in, a checked action in CSS pixels out.

Everything here is pure so the rules can be tested without a browser. Each
rejection names the field, e.g. ``action.click.at.x: 1200 is outside [0, 1000]``.
"""

from __future__ import annotations

import dataclasses
import math
import re

from asyncwebrl.envfleet.errors import InvalidArgument
from asyncwebrl.v1 import env_pb2

NORMALIZED_MAX = 1000.0
MAX_URL_CHARS = 2048
MAX_ANSWER_CHARS = 4096

_NAMED_KEYS = {
    "Enter", "Tab", "Escape", "Backspace", "Delete", "Insert", "Space",
    "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home", "End", "PageUp", "PageDown",
    *(f"F{i}" for i in range(1, 13)),
}
_MODIFIERS = {"Control", "Shift", "Alt", "Meta", "ControlOrMeta"}


@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    """An action ready for the browser; coordinates in CSS pixels."""

    kind: str
    x: float | None = None
    y: float | None = None
    text: str = ""
    clear: bool = False
    enter: bool = False
    key: str = ""
    dx: float = 0.0
    dy: float = 0.0
    url: str = ""
    ms: int = 0


def _point(point: env_pb2.Point, field: str, space: int, width: int, height: int) -> tuple[float, float]:
    out = []
    for axis, value, size in (("x", point.x, width), ("y", point.y, height)):
        name = f"{field}.{axis}"
        if not math.isfinite(value):
            raise InvalidArgument(name, "must be a finite number")
        if space == env_pb2.COORDINATE_SPACE_PIXELS:
            if not 0 <= value < size:
                raise InvalidArgument(name, f"{value:g} is outside the viewport [0, {size})")
            out.append(float(value))
        else:
            if not 0 <= value <= NORMALIZED_MAX:
                raise InvalidArgument(name, f"{value:g} is outside [0, 1000]")
            # AsyncWebRL's rescaling: round(W * x / 1000), kept inside the viewport.
            out.append(float(min(size - 1, round(size * value / NORMALIZED_MAX))))
    return out[0], out[1]


def _key(key: str) -> str:
    if not key or len(key) > 64:
        raise InvalidArgument("action.press.key", "must be 1-64 characters")
    parts = key.split("+")
    *mods, main = parts if key != "+" else ["+"]
    for mod in mods:
        if mod not in _MODIFIERS:
            raise InvalidArgument("action.press.key", f"unknown modifier {mod!r}")
    if main not in _NAMED_KEYS and not (len(main) == 1 and main.isprintable()):
        raise InvalidArgument("action.press.key", f"unknown key {main!r}")
    return key


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check(action: env_pb2.Action, width: int, height: int, *, max_type_chars: int, max_wait_ms: int) -> Checked:
    """Validate ``action`` against a ``width`` x ``height`` viewport."""
    space = action.coordinates
    if space not in (
        env_pb2.COORDINATE_SPACE_UNSPECIFIED,
        env_pb2.COORDINATE_SPACE_NORMALIZED_1000,
        env_pb2.COORDINATE_SPACE_PIXELS,
    ):
        raise InvalidArgument("action.coordinates", f"unknown coordinate space {space}")
    kind = action.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("action", "no action set (one of click, double_click, type, press, scroll, ...)")
    if kind in ("click", "double_click"):
        msg = getattr(action, kind)
        if not msg.HasField("at"):
            raise InvalidArgument(f"action.{kind}.at", "is required")
        x, y = _point(msg.at, f"action.{kind}.at", space, width, height)
        return Checked(kind, x, y)
    if kind == "type":
        t = action.type
        if len(t.text) > max_type_chars:
            raise InvalidArgument("action.type.text", f"{len(t.text)} characters exceeds the limit of {max_type_chars}")
        if _CONTROL.search(t.text):
            raise InvalidArgument("action.type.text", "contains control characters")
        x = y = None
        if t.HasField("at"):
            x, y = _point(t.at, "action.type.at", space, width, height)
        return Checked(kind, x, y, text=t.text, clear=t.clear, enter=t.enter)
    if kind == "press":
        return Checked(kind, key=_key(action.press.key))
    if kind == "scroll":
        s = action.scroll
        if s.direction == env_pb2.SCROLL_DIRECTION_UNSPECIFIED or s.direction not in (1, 2, 3, 4):
            raise InvalidArgument("action.scroll.direction", "must be UP, DOWN, LEFT or RIGHT")
        if not math.isfinite(s.amount) or not 0 <= s.amount <= 100_000:
            raise InvalidArgument("action.scroll.amount", "must be in [0, 100000] pixels")
        horizontal = s.direction in (env_pb2.SCROLL_DIRECTION_LEFT, env_pb2.SCROLL_DIRECTION_RIGHT)
        amount = s.amount or (width if horizontal else height)
        sign = -1.0 if s.direction in (env_pb2.SCROLL_DIRECTION_UP, env_pb2.SCROLL_DIRECTION_LEFT) else 1.0
        x, y = (width / 2, height / 2)
        if s.HasField("at"):
            x, y = _point(s.at, "action.scroll.at", space, width, height)
        return Checked(kind, x, y, dx=sign * amount if horizontal else 0.0, dy=0.0 if horizontal else sign * amount)
    if kind == "go_back":
        return Checked(kind)
    if kind == "navigate":
        url = action.navigate.url.strip()
        if not url or len(url) > MAX_URL_CHARS:
            raise InvalidArgument("action.navigate.url", f"must be 1-{MAX_URL_CHARS} characters")
        return Checked(kind, url=url)
    if kind == "wait":
        if not 0 <= action.wait.ms <= max_wait_ms:
            raise InvalidArgument("action.wait.ms", f"must be in [0, {max_wait_ms}]")
        return Checked(kind, ms=action.wait.ms)
    if kind == "answer":
        if len(action.answer.text) > MAX_ANSWER_CHARS:
            raise InvalidArgument("action.answer.text", f"exceeds {MAX_ANSWER_CHARS} characters")
        return Checked(kind, text=action.answer.text)
    raise InvalidArgument("action", f"unsupported action {kind}")  # pragma: no cover - new oneof member
