"""Task sources on a real page, without the service: seeding, instruction, reward, timer."""

from __future__ import annotations

import pytest

from asyncwebrl.envfleet.tasks import MiniWoBSource, StaticSource, _reward


@pytest.fixture
async def miniwob():
    source = MiniWoBSource()
    await source.start()
    yield source
    await source.stop()


async def test_miniwob_episode_protocol(browser, miniwob):
    spec = next(t for t in miniwob.tasks() if t.name == "miniwob/click-test")
    page = await browser.new_page(viewport={"width": 160, "height": 210})
    await page.goto(miniwob.url(spec, 3))
    assert await miniwob.begin(page, spec, 3) == "Click the button."
    # Timer off: setTimeout's largest delay, not the page's 10 s.
    assert await page.evaluate("core.EPISODE_MAX_TIME") == 2**31 - 1
    outcome = await miniwob.outcome(page)
    assert not outcome.done and outcome.reward == 0
    await page.click("#subbtn")
    outcome = await miniwob.outcome(page)
    assert outcome.done and outcome.reward == 1.0


async def test_miniwob_seed_fixes_the_instance(browser, miniwob):
    spec = next(t for t in miniwob.tasks() if t.name == "miniwob/click-button")
    page = await browser.new_page()
    await page.goto(miniwob.url(spec, 0))
    seen = []
    for seed in (11, 11, 12):
        instruction = await miniwob.begin(page, spec, seed)
        seen.append((instruction, await page.inner_html("#area")))
    assert seen[0] == seen[1]
    assert seen[0] != seen[2]


async def test_flight_tasks_load_over_http(browser, miniwob):
    spec = next(t for t in miniwob.tasks() if t.name == "miniwob/flight.AA")
    assert miniwob.url(spec, 0).startswith("http://127.0.0.1:")
    page = await browser.new_page(viewport={"width": 375, "height": 667})
    await page.goto(miniwob.url(spec, 0))
    assert len(await miniwob.begin(page, spec, 0)) > 10


async def test_static_page_cannot_fake_a_reward(browser, tmp_path):
    (tmp_path / "t.html").write_text(
        "<script>window.ASYNCWEBRL_REWARD = 'lots'; window.ASYNCWEBRL_DONE = 1;</script>"
        "<div id=instruction>do it</div>"
    )
    source = StaticSource((str(tmp_path),))
    await source.start()
    try:
        spec = source.tasks()[0]
        page = await browser.new_page()
        await page.goto(source.url(spec, 1))
        assert await source.begin(page, spec, 1) == "do it"
        outcome = await source.outcome(page)
        assert outcome.done and outcome.reward == 0.0
    finally:
        await source.stop()


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (-1, -1.0), (0.5, 0.5), (True, 0.0), ("1", 0.0),
                                                 (None, 0.0), (float("inf"), 0.0), (1e9, 0.0)])
def test_reward_values_from_pages_are_bounded(value, expected):
    assert _reward(value) == expected
