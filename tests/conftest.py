"""Fixtures every test module shares: a real redis-server, Chromium, free ports, service processes."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterator

import pytest

from asyncwebrl.common.localstack import RedisServer
from asyncwebrl.envfleet.config import CHROMIUM_FLAGS

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("ASYNCWEBRL_CHROMIUM_PATH", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="asyncwebrl-redis-") as d:
        server = RedisServer(pathlib.Path(d))
        yield server
        server.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    assert os.access(CHROMIUM, os.X_OK), f"Chromium missing at {CHROMIUM}: run 'make setup'"
    return CHROMIUM


@pytest.fixture
async def browser(chromium_path):
    """A real headless Chromium through Playwright, with the project's flags."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        yield b
        await b.close()


