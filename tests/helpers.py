"""Small helpers the test packages share."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 120.0, what: str = "condition", interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not met in {timeout}s")
