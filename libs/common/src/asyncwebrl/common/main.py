"""Every service's ``python -m asyncwebrl.<service>``: one start-up path.

``service_main`` parses the flags and ``ASYNCWEBRL_*`` variables into the
service's config (exit 2 naming the field on bad input), sets up logging, logs
"starting" with the config (secrets masked), runs ``serve(config)`` until it
returns (each service's ``serve`` stops on SIGTERM/SIGINT), and turns the
start-up errors the service names into one "cannot start: ..." line and exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from asyncwebrl.common.config import parse_config, redacted
from asyncwebrl.common.logs import setup_logging
from asyncwebrl.common.memory import keep_large_allocations

C = TypeVar("C")


def service_main(
    name: str,
    config_cls: type[C],
    serve: Callable[[C], Awaitable[None]],
    argv: Sequence[str] | None = None,
    *,
    errors: tuple[type[BaseException], ...] = (OSError,),
    setup: Callable[[C], Mapping[str, Any] | None] | None = None,
    large_allocations: bool = False,
    failing: str = "start",
) -> None:
    """Run service ``name`` (``python -m asyncwebrl.<name>``, logger ``asyncwebrl.<name>``).

    ``errors``: exceptions of ``serve`` that end the process with "cannot <failing>: <exc>" and exit 1
    (a port taken, Redis unreachable, a bad model path); anything else keeps its traceback.
    ``setup``: runs after logging is set up, before the "starting" line; what it returns is added to that
    line, and None leaves the line out (a process that keeps quiet, such as a trainer's rank > 0).
    ``large_allocations``: tune malloc for services that parse large messages (``keep_large_allocations``).
    """
    log = logging.getLogger(f"asyncwebrl.{name}")
    config = parse_config(config_cls, argv, prog=f"python -m asyncwebrl.{name}")
    setup_logging(name, config.log_level, config.log_format)  # type: ignore[attr-defined]
    if large_allocations:
        keep_large_allocations()
    extra = setup(config) if setup is not None else {}
    if extra is not None:
        log.info("starting", extra={"config": redacted(config), **extra})
    try:
        asyncio.run(serve(config))
    except errors as exc:
        log.error(f"cannot {failing}: %s", exc)
        sys.exit(1)
