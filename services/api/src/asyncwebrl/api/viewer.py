"""The trajectory viewer: the episodes a job kept (``asyncwebrl.common.archive``), as JSON and as a page.

Archives live at ``<run_dir>/<job_id>/episodes/<source>/`` with ``<source>`` ``train`` (a few episodes of
every training step) or ``eval-<n>`` (every episode of evaluation n). The JSON routes need the bearer token;
the page itself holds no data (it reads the token from the URL fragment and calls the JSON routes), so it is
served without one. Every path part is checked against its pattern before it names a file, and whatever it
names must resolve inside the run directory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import pathlib
import re
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from asyncwebrl.api.errors import BadPageToken
from asyncwebrl.api.store import decode_token, encode_token
from asyncwebrl.common.archive import EPISODE_ID, SHA256, EpisodeArchive
from asyncwebrl.common.keys import is_job_id

SOURCE = re.compile(r"^(train|eval-[0-9]{1,6})$")
PAGE = pathlib.Path(__file__).resolve().parent / "static" / "viewer.html"
MAX_SOURCES = 1000  # source directories listed per job

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_type(data: bytes) -> str:
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    if data.startswith(PNG_MAGIC):
        return "image/png"
    return "application/octet-stream"


def _source_order(name: str) -> tuple[int, int]:
    return (0, 0) if name == "train" else (1, int(name.split("-", 1)[1]))


def page_policy(html: str) -> str:
    """A Content-Security-Policy that lets only the page's own inline script and style run: even an
    escaping bug could not execute injected markup."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                        for b in blocks)
    return ("default-src 'none'; "
            f"script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def viewer_router(run_dir: pathlib.Path, auth: list, existing) -> APIRouter:
    """``auth``: dependencies of the data routes; ``existing(job_id)``: the job, or a 404 problem."""
    router = APIRouter()
    html = PAGE.read_text(encoding="utf-8")
    html_headers = {"Content-Security-Policy": page_policy(html), "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

    def root() -> pathlib.Path:
        return pathlib.Path(run_dir).resolve()

    def inside(path: pathlib.Path) -> bool:
        try:
            return path.resolve().is_relative_to(root())
        except (OSError, RuntimeError):  # a symlink loop
            return False

    def check_source(source: str) -> str:
        if len(source) > 16 or not SOURCE.match(source):
            raise HTTPException(400, "source: must be train or eval-<n> (n up to 6 digits)")
        return source

    def archive(job_id: str, source: str) -> EpisodeArchive | None:
        """The source's archive, None when it does not exist (or would lead out of the run directory)."""
        path = pathlib.Path(run_dir) / job_id / "episodes" / source
        return EpisodeArchive(path) if path.is_dir() and inside(path) else None

    def sources(job_id: str) -> list[str]:
        base = pathlib.Path(run_dir) / job_id / "episodes"
        if not base.is_dir() or not inside(base):
            return []
        found = []
        for entry in base.iterdir():
            if SOURCE.match(entry.name) and entry.is_dir() and inside(entry):
                found.append(entry.name)
                if len(found) >= MAX_SOURCES:
                    break
        return sorted(found, key=_source_order)

    def listing(job_id: str, source: str, offset: int, limit: int) -> dict:
        names = sources(job_id)
        store = archive(job_id, source) if source in names else None
        page, total = store.list(offset, limit) if store is not None else ([], 0)
        nxt = offset + limit
        return {"job_id": job_id, "sources": names, "source": source,
                "episodes": [{**s.view(), "source": source} for s in page], "total": total,
                "next_page_token": encode_token(nxt) if nxt < total else ""}

    def episode(job_id: str, source: str, episode_id: str) -> dict | None:
        store = archive(job_id, source)
        doc = store.get(episode_id) if store is not None else None
        if doc is None:
            return None
        return {**doc, "job_id": job_id, "source": source}

    def screenshot(job_id: str, source: str, sha256: str) -> bytes | None:
        store = archive(job_id, source)
        if store is None or not inside(store.blobs / sha256):
            return None
        return store.blob(sha256)

    @router.get("/v1/jobs/{job_id}/episodes", dependencies=auth, tags=["viewer"])
    async def list_episodes(job_id: str, source: Annotated[str, Query(max_length=16)] = "train",
                            page_size: Annotated[int, Query(ge=1, le=200)] = 50,
                            page_token: Annotated[str, Query(max_length=200)] = "") -> dict:
        """The episodes one source of the job kept, newest first; ``sources`` names every source there is."""
        job = await existing(job_id)
        check_source(source)
        try:
            offset = decode_token(page_token) if page_token else 0
        except BadPageToken as exc:
            raise HTTPException(400, str(exc)) from exc
        return await asyncio.to_thread(listing, job.job_id, source, offset, page_size)

    @router.get("/v1/jobs/{job_id}/episodes/{source}/{episode_id}", dependencies=auth, tags=["viewer"])
    async def get_episode(job_id: str, source: str, episode_id: str) -> dict:
        """One episode step by step: the model's text, the parsed action (coordinates in 0-1000 of the
        screenshot), the invalid flag, the screenshot's reference and the reward."""
        job = await existing(job_id)
        check_source(source)
        if not EPISODE_ID.match(episode_id):
            raise HTTPException(400, "episode_id: must match [A-Za-z0-9_.:-]{1,200}")
        doc = await asyncio.to_thread(episode, job.job_id, source, episode_id)
        if doc is None:
            raise HTTPException(404, f"episode_id: no episode {episode_id!r} in {source}")
        return doc

    @router.get("/v1/jobs/{job_id}/episodes/{source}/screenshots/{sha256}", dependencies=auth, tags=["viewer"])
    async def get_screenshot(job_id: str, source: str, sha256: str) -> Response:
        """A kept screenshot by its sha256 (JPEG or PNG)."""
        job = await existing(job_id)
        check_source(source)
        if not SHA256.match(sha256):
            raise HTTPException(400, "sha256: must be 64 lowercase hex digits")
        data = await asyncio.to_thread(screenshot, job.job_id, source, sha256)
        if data is None:
            raise HTTPException(404, f"sha256: no screenshot {sha256} in {source}")
        return Response(data, media_type=image_type(data),
                        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})

    @router.get("/viewer/{job_id}", response_class=HTMLResponse, tags=["viewer"])
    async def viewer_page(job_id: str) -> HTMLResponse:
        """The trajectory viewer page (no data in it: open it as ``/viewer/<job>#token=<api token>``)."""
        if not is_job_id(job_id):
            raise HTTPException(400, "job_id: must match [A-Za-z0-9_-]{1,64}")
        return HTMLResponse(html, headers=html_headers)

    return router
