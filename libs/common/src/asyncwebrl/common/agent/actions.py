"""The action grammar and the parser from model text to an action.

The policy answers with free text (memory, progress, intention) and then one
tool call, as Qwen computer-use models do::

    <tool_call>{"name": "computer_use", "arguments": {"action": "click", "coordinate": [500, 300]}}</tool_call>

Coordinates are 0-1000 on both axes of the screenshot. The parser is tolerant
of whitespace and text around the call, strict on values, and never raises:
anything it cannot accept becomes a ``wait`` step flagged invalid, which uses up
a step like any other.
"""

from __future__ import annotations

import dataclasses
import json
import re

from asyncwebrl.v1 import env_pb2

TOOL_NAME = "computer_use"
ACTIONS = ("click", "double_click", "type", "press", "scroll", "go_back", "navigate", "wait", "answer")
SCROLL_DIRECTIONS = {
    "up": env_pb2.SCROLL_DIRECTION_UP,
    "down": env_pb2.SCROLL_DIRECTION_DOWN,
    "left": env_pb2.SCROLL_DIRECTION_LEFT,
    "right": env_pb2.SCROLL_DIRECTION_RIGHT,
}
MAX_TEXT = 2000
MAX_KEY = 64
MAX_URL = 2048
MAX_WAIT_S = 10.0
MAX_OUTPUT_CHARS = 64 * 1024
_KEY = re.compile(r"^(?:(?:Control|Shift|Alt|Meta)\+){0,3}[A-Za-z0-9]{1,20}$|^[ -~]$")
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

# The system prompt's description of the tool: the one place the grammar is written.
GRAMMAR = f"""You control a web browser through one tool, `{TOOL_NAME}`. Coordinates are
[x, y] in 0-1000 on both axes of the screenshot (0,0 top left, 1000,1000 bottom right).
Actions (the "action" argument, with the other arguments it needs):
- click: coordinate
- double_click: coordinate
- type: text; optional coordinate (clicked first), clear (bool), enter (bool)
- press: key, e.g. "Enter", "Tab", "Control+a"
- scroll: direction (up | down | left | right); optional coordinate
- go_back
- navigate: url (http or https)
- wait: seconds (0-{MAX_WAIT_S:g})
- answer: text (ends the episode with this answer)
First think in a few short lines (Memory, Progress, Intention), then give exactly one call:
<tool_call>{{"name": "{TOOL_NAME}", "arguments": {{"action": "click", "coordinate": [500, 300]}}}}</tool_call>"""


@dataclasses.dataclass(frozen=True)
class ParsedAction:
    """One parsed step. ``valid`` False means a no-op ``wait`` stands in for it."""

    action: str
    arguments: dict
    valid: bool
    error: str = ""

    def to_json(self) -> str:
        return json.dumps({"action": self.action, **self.arguments}, sort_keys=True)

    def summary(self) -> str:
        """A short line for the history of earlier steps."""
        if not self.valid:
            return "invalid output (no action)"
        args = ", ".join(f"{k}={json.dumps(v)[:60]}" for k, v in sorted(self.arguments.items()))
        return f"{self.action}({args})"

    def to_env(self) -> env_pb2.Action:
        """The envfleet Action: coordinates stay in the normalised 0-1000 space."""
        a = self.arguments
        action = env_pb2.Action(coordinates=env_pb2.COORDINATE_SPACE_NORMALIZED_1000)
        point = env_pb2.Point(x=a["coordinate"][0], y=a["coordinate"][1]) if "coordinate" in a else None
        if not self.valid:
            action.wait.ms = 0
        elif self.action == "click":
            action.click.at.CopyFrom(point)
        elif self.action == "double_click":
            action.double_click.at.CopyFrom(point)
        elif self.action == "type":
            action.type.text = a["text"]
            action.type.clear = a.get("clear", False)
            action.type.enter = a.get("enter", False)
            if point is not None:
                action.type.at.CopyFrom(point)
        elif self.action == "press":
            action.press.key = a["key"]
        elif self.action == "scroll":
            action.scroll.direction = SCROLL_DIRECTIONS[a["direction"]]
            if point is not None:
                action.scroll.at.CopyFrom(point)
        elif self.action == "go_back":
            action.go_back.SetInParent()
        elif self.action == "navigate":
            action.navigate.url = a["url"]
        elif self.action == "wait":
            action.wait.ms = int(a["seconds"] * 1000)
        elif self.action == "answer":
            action.answer.text = a["text"]
        return action


def invalid(error: str) -> ParsedAction:
    return ParsedAction("wait", {"seconds": 0}, False, error[:200])


def parse_action(text: str) -> ParsedAction:
    """Model text -> action. Never raises."""
    try:
        return _parse(text)
    except Exception as exc:  # noqa: BLE001 - a parser bug must not end an episode
        return invalid(f"parser error: {type(exc).__name__}")


def _parse(text: str) -> ParsedAction:
    if not isinstance(text, str):
        return invalid("output is not text")
    calls = _CALL.findall(text[:MAX_OUTPUT_CHARS])
    if not calls:
        return invalid("no <tool_call>...</tool_call> in the output")
    if len(calls) > 1:
        return invalid("more than one tool call")
    try:
        call = json.loads(calls[0])
    except json.JSONDecodeError as exc:
        return invalid(f"tool call is not JSON: {exc.msg}")
    if not isinstance(call, dict) or call.get("name") != TOOL_NAME or not isinstance(call.get("arguments"), dict):
        return invalid(f'tool call must be {{"name": "{TOOL_NAME}", "arguments": {{...}}}}')
    args = dict(call["arguments"])
    action = args.pop("action", None)
    if action not in ACTIONS:
        return invalid(f"unknown action {str(action)[:40]!r}")
    try:
        clean = _ARGUMENTS[action](args)
    except ValueError as exc:
        return invalid(f"{action}: {exc}")
    return ParsedAction(action, clean, True)


def _no_extra(args: dict, allowed: set[str]) -> None:
    extra = set(args) - allowed
    if extra:
        raise ValueError(f"unexpected arguments {sorted(extra)}")


def _coordinate(value) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError("coordinate must be [x, y] numbers")
    if not all(0 <= v <= 1000 for v in value):
        raise ValueError("coordinate must be within 0-1000")
    return [float(value[0]), float(value[1])]


def _text(value, name: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{name} must be a string of at most {limit} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise ValueError(f"{name} has control characters")
    return value


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def _point_action(args: dict) -> dict:
    _no_extra(args, {"coordinate"})
    return {"coordinate": _coordinate(args.get("coordinate"))}


def _type(args: dict) -> dict:
    _no_extra(args, {"text", "coordinate", "clear", "enter"})
    out = {"text": _text(args.get("text"), "text")}
    if "coordinate" in args:
        out["coordinate"] = _coordinate(args["coordinate"])
    for name in ("clear", "enter"):
        if name in args:
            out[name] = _flag(args[name], name)
    return out


def _press(args: dict) -> dict:
    _no_extra(args, {"key"})
    key = _text(args.get("key"), "key", MAX_KEY)
    if not _KEY.match(key):
        raise ValueError("key must be a key name such as Enter, Tab or Control+a")
    return {"key": key}


def _scroll(args: dict) -> dict:
    _no_extra(args, {"direction", "coordinate"})
    if args.get("direction") not in SCROLL_DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(SCROLL_DIRECTIONS)}")
    out = {"direction": args["direction"]}
    if "coordinate" in args:
        out["coordinate"] = _coordinate(args["coordinate"])
    return out


def _go_back(args: dict) -> dict:
    _no_extra(args, set())
    return {}


def _navigate(args: dict) -> dict:
    _no_extra(args, {"url"})
    url = _text(args.get("url"), "url", MAX_URL)
    if not re.match(r"^https?://[^\s]+$", url):
        raise ValueError("url must be http(s)://...")
    return {"url": url}


def _wait(args: dict) -> dict:
    _no_extra(args, {"seconds"})
    seconds = args.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_WAIT_S:
        raise ValueError(f"seconds must be a number in [0, {MAX_WAIT_S:g}]")
    return {"seconds": float(seconds)}


def _answer(args: dict) -> dict:
    _no_extra(args, {"text"})
    return {"text": _text(args.get("text"), "text")}


_ARGUMENTS = {
    "click": _point_action,
    "double_click": _point_action,
    "type": _type,
    "press": _press,
    "scroll": _scroll,
    "go_back": _go_back,
    "navigate": _navigate,
    "wait": _wait,
    "answer": _answer,
}


def _point_1000(point: env_pb2.Point) -> list[int]:
    return [min(1000, max(0, round(point.x))), min(1000, max(0, round(point.y)))]


def format_action(action: env_pb2.Action) -> str:
    """An envfleet Action (coordinates in 0-1000) as the tool call a model would write:
    the inverse of ``parse_action``, used to turn demonstrations into training text."""
    kind = action.WhichOneof("kind")
    args: dict = {"action": kind}
    if kind in ("click", "double_click"):
        args["coordinate"] = _point_1000(getattr(action, kind).at)
    elif kind == "type":
        t = action.type
        args["text"] = t.text
        if t.HasField("at"):
            args["coordinate"] = _point_1000(t.at)
        if t.clear:
            args["clear"] = True
        if t.enter:
            args["enter"] = True
    elif kind == "press":
        args["key"] = action.press.key
    elif kind == "scroll":
        names = {v: k for k, v in SCROLL_DIRECTIONS.items()}
        args["direction"] = names.get(action.scroll.direction, "down")
        if action.scroll.HasField("at"):
            args["coordinate"] = _point_1000(action.scroll.at)
    elif kind == "navigate":
        args["url"] = action.navigate.url
    elif kind == "wait":
        args["seconds"] = round(action.wait.ms / 1000, 3)
    elif kind == "answer":
        args["text"] = action.answer.text
    elif kind != "go_back":
        raise ValueError(f"action: cannot format {kind!r}")
    call = {"name": TOOL_NAME, "arguments": args}
    return f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>"
