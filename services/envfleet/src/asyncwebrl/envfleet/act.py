"""Acting: carry out one checked action on a session's page.

The action was validated by ``actions.check``; here it becomes mouse, keyboard and
navigation calls, with the host policy applied to agent navigations and a short
settle so a navigation the action starts is waited for. A failure that is the
agent's doing (a timeout, a refused navigation) goes into ``info.error``; a broken
browser or page is raised for the caller to void the episode.
"""

from __future__ import annotations

import asyncio

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

from asyncwebrl.envfleet import security
from asyncwebrl.envfleet.actions import Checked
from asyncwebrl.envfleet.pool import Pool, Session
from asyncwebrl.v1 import env_pb2


async def act(pool: Pool, session: Session, a: Checked, info: env_pb2.StepInfo) -> None:
    page = session.page
    navigations = session.navigations
    try:
        if a.kind == "click":
            await page.mouse.click(a.x, a.y)
        elif a.kind == "double_click":
            await page.mouse.dblclick(a.x, a.y)
        elif a.kind == "type":
            if a.x is not None:
                await page.mouse.click(a.x, a.y)
            if a.clear:
                await page.keyboard.press("ControlOrMeta+a")
                await page.keyboard.press("Backspace")
            if a.text:
                await page.keyboard.type(a.text)
            if a.enter:
                await page.keyboard.press("Enter")
        elif a.kind == "press":
            await page.keyboard.press(a.key)
        elif a.kind == "scroll":
            await page.mouse.move(a.x, a.y)
            await page.mouse.wheel(a.dx, a.dy)
            # Wheel scrolling lands asynchronously; two frames later it has.
            await page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        elif a.kind == "go_back":
            await page.go_back(wait_until="load")
        elif a.kind == "navigate":
            reason = security.HostPolicy(session.source.allowed_origins(session.task)).violation(
                a.url, navigation=True
            )
            if reason is not None:
                pool.on_block(session, reason, a.url)
                info.blocked = True
                info.blocked_reason = reason
            else:
                await page.goto(a.url, wait_until="load")
        elif a.kind == "wait":
            await asyncio.sleep(a.ms / 1000)
        settle = pool.config.settle_ms if pool.config.settle_ms >= 0 else session.source.settle_ms
        if settle and a.kind in ("click", "double_click", "type", "press"):
            # A submit or a link starts its navigation a few ms after the input event.
            await asyncio.sleep(settle / 1000)
        if session.navigations != navigations and a.kind not in ("go_back", "navigate"):
            await page.wait_for_load_state("load")
    except PlaywrightTimeout as exc:
        info.error = f"timeout: {str(exc).splitlines()[0][:200]}"
    except PlaywrightError as exc:
        if not session.host.connected or page.is_closed() or session.id not in pool.sessions:
            raise
        # A failed navigation (blocked redirect, DNS) is the agent's problem, not the fleet's.
        info.error = str(exc).splitlines()[0][:200]
