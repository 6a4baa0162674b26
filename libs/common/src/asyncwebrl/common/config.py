"""Typed service configuration from flags and ``ASYNCWEBRL_*`` environment variables.

A service declares one dataclass whose fields carry their help text in
``metadata["help"]`` and whose ``__post_init__`` raises ``ValueError`` naming the
field. ``parse_config`` turns it into an argparse parser: every field becomes a
``--flag-name``; its default comes from ``ASYNCWEBRL_FLAG_NAME`` when set, else
from the dataclass. Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

ENV_PREFIX = "ASYNCWEBRL_"

C = TypeVar("C")


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with its help text."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """Unwrap ``X | None`` to ``X``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _converter(tp: Any):
    tp = _base_type(tp)
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    if typing.get_origin(tp) in (list, tuple) and typing.get_args(tp)[0] is str:
        return lambda s: tuple(p.strip() for p in s.split(",") if p.strip())
    raise TypeError(f"unsupported config field type {tp!r}")


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (cls.__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=f"Every flag can also be set by the environment variable {ENV_PREFIX}<FLAG_NAME> "
        "(upper case, '-' as '_'); a flag wins over the environment.",
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        help_text = f.metadata.get("help")
        if not help_text:
            raise TypeError(f"config field {cls.__name__}.{f.name} has no help text")
        secret = f.metadata.get("secret", False)
        shown = "(hidden)" if secret else None
        tp = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": f"{help_text} [env {env_name(f.name)}]"}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _converter(tp)
            kwargs["metavar"] = "A,B,..." if typing.get_origin(tp) in (list, tuple) else tp.__name__.upper()
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs["default"] = argparse.SUPPRESS
        if shown is None:
            kwargs["help"] += f" (default: {default!r})"
        parser.add_argument(_flag_name(f.name), **kwargs)
    return parser


def parse_config(
    cls: type[C],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> C:
    """Parse flags and environment into ``cls``; exit 2 with a message naming the field on bad input."""
    environ = os.environ if environ is None else environ
    parser = build_parser(cls, prog=prog)
    args = vars(parser.parse_args(argv))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in args:
            values[f.name] = args[f.name]
        elif env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            try:
                values[f.name] = _converter(hints[f.name])(raw)
            except ValueError as exc:
                parser.error(f"{env_name(f.name)}: {exc}")
    try:
        return cls(**values)
    except ValueError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")


def require(condition: bool, field: str, message: str) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{field}: {message}")


def redacted(config: Any) -> dict[str, Any]:
    """The config as a dict with secret fields masked, for start-up logs."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = "***" if f.metadata.get("secret") and value else value
    return out

