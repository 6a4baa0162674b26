"""Ending a cancelled task whose cancellation a library swallowed.

A client may turn the CancelledError into its own error (aiohttp: a timeout) or drop it (redis-py's
writes go through Python 3.11's asyncio.wait_for, which returns the result of an inner call that
finished as the cancel came). A background loop that catches the library's errors and goes round
again would then never end, and whoever awaits it on shutdown waits forever. Such loops call
``end_if_cancelled()`` once per round (the k8s launcher also checks ``cancelling()`` before handling
a caught error, so a cancel is not logged as a failure).
"""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    """True in a task that has been asked to cancel, whether or not the CancelledError reached it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def end_if_cancelled() -> None:
    if cancelling():
        raise asyncio.CancelledError
