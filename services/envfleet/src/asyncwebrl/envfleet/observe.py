"""Observing: what an agent sees after an action, and what the task says of it.

A screenshot (stored through the buffer's PutBlobs, with backpressure when
its blob budget is spent), the page's URL and title, optionally the boxes of visible elements,
and the task's outcome (reward, done) read from the page or from the task's
server. A read that lands in a document being replaced waits and tries again.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from playwright.async_api import Error as PlaywrightError

from asyncwebrl.common.blobstore import BlobBudgetExceeded, BlobRef
from asyncwebrl.common.keys import DEFAULT_JOB
from asyncwebrl.envfleet import metrics
from asyncwebrl.envfleet.blobs import BufferBlobs
from asyncwebrl.envfleet.config import EnvfleetConfig
from asyncwebrl.envfleet.errors import Exhausted
from asyncwebrl.envfleet.pool import Session
from asyncwebrl.envfleet.tasks import Outcome
from asyncwebrl.v1 import env_pb2

# Playwright's words for "the page navigated under this call".
_NAVIGATING = re.compile(r"context was destroyed|navigat|Unable to capture screenshot", re.I)

_ELEMENTS_JS = """(limit) => {
  const out = [];
  const sel = 'a,button,input,select,textarea,label,[role],[onclick],[tabindex],span,td,li,h1,h2,h3,p';
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0 || r.bottom < 0 || r.right < 0
        || r.top > innerHeight || r.left > innerWidth) continue;
    const text = (el.value !== undefined && el.tagName === 'INPUT' ? el.value : el.innerText || '')
      .replace(/\\s+/g, ' ').trim().slice(0, 200);
    out.push([el.tagName.toLowerCase(), el.id || '', text,
              el.getAttribute('type') || el.getAttribute('role') || '', r.x, r.y, r.width, r.height]);
    if (out.length >= limit) break;
  }
  return out;
}"""


class Observer:
    """Observations and outcomes of sessions' pages; screenshots go to ``blobs`` (the buffer)."""

    def __init__(self, config: EnvfleetConfig, blobs: BufferBlobs) -> None:
        self.config = config
        self.blobs = blobs

    async def read(
        self, session: Session, info: env_pb2.StepInfo, answer: str | None
    ) -> tuple[Outcome, env_pb2.Observation]:
        """Outcome and observation; an action may have started a navigation, so a
        read that lands in the old document waits for the new one and tries again."""
        source = session.source
        for attempt in range(3):
            try:
                if source.outcome_script is None:  # the task's state lives on its server
                    observation = await self.observe(session, info)
                    # Read after the screenshot: a submit the page has drawn has reached the server.
                    return source.episode_outcome(session.episode, answer), observation
                # One round trip for the page title and the task's outcome.
                title, raw = await session.page.evaluate(f"() => [document.title, ({source.outcome_script})()]")
                return source.parse_outcome(raw), await self.observe(session, info, title)
            except PlaywrightError as exc:
                if attempt == 2 or not _NAVIGATING.search(str(exc)):
                    raise
                await session.page.wait_for_load_state("load")
        raise AssertionError("unreachable")

    async def _store_screenshot(self, session: Session, shot: bytes) -> BlobRef:
        # Past the buffer's blob budget (RESOURCE_EXHAUSTED), wait for trained groups to free
        # memory (backpressure) for a bounded time rather than fail the episode at once. The
        # buffer away raises Unavailable and a refusal raises BufferRejected: neither is waited on.
        deadline = time.monotonic() + self.config.blob_wait_s
        delay = 0.05
        while True:
            try:
                return await self.blobs.put(
                    session.job_id or DEFAULT_JOB, shot, f"image/{session.image_format}", session.width, session.height
                )
            except BlobBudgetExceeded as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    metrics.BLOB_BACKPRESSURE.labels("refused").inc()
                    raise Exhausted(str(exc)) from exc
                metrics.BLOB_BACKPRESSURE.labels("waited").inc()
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)

    async def observe(
        self, session: Session, info: env_pb2.StepInfo | None = None, title: Any = None
    ) -> env_pb2.Observation:
        page = session.page
        kwargs = {"type": session.image_format}
        if session.image_format == "jpeg":
            kwargs["quality"] = session.quality
        shot = await page.screenshot(**kwargs)
        title = str(await page.title() if title is None else title)[:512]
        ref = await self._store_screenshot(session, shot)
        metrics.SCREENSHOT_BYTES.inc(len(shot))
        metrics.SCREENSHOTS.labels(session.image_format).inc()
        observation = env_pb2.Observation(
            screenshot=env_pb2.ScreenshotRef(
                sha256=ref.sha256, width=ref.width, height=ref.height, mime=ref.mime, size_bytes=ref.size_bytes
            ),
            url=page.url[:2048],
            title=title,
            instruction=session.instruction,
            step_index=session.step_index + (info is not None),
        )
        if session.include_elements and self.config.max_elements:
            await self.elements(session, observation)
        if info is not None:
            info.page_changed = ref.sha256 != session.last_sha
            session.step_index += 1
        session.last_sha = ref.sha256
        return observation

    async def elements(self, session: Session, observation: env_pb2.Observation) -> None:
        raw = await session.page.evaluate(_ELEMENTS_JS, self.config.max_elements or 200)
        # The page runs our script in its own world and could have tampered with it.
        for item in raw[: self.config.max_elements or 200] if isinstance(raw, list) else ():
            try:
                tag, el_id, text, kind, x, y, w, h = item
                observation.elements.add(
                    tag=str(tag)[:32], id=str(el_id)[:128], text=str(text)[:200], type=str(kind)[:32],
                    x=float(x), y=float(y), width=float(w), height=float(h),
                )
            except (TypeError, ValueError):
                continue
