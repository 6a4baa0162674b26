"""The trajectory viewer, real parts only: the api as a process over a real redis-server, an archive written
with EpisodeArchive from buffer protos and PIL-rendered screenshots, and the page in headless Chromium
(pixels of the click marker read back from the canvas and from a screenshot of the page)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import os
import pathlib
import shutil

import pytest
from PIL import Image, ImageDraw, ImageFont

from asyncwebrl.common.archive import EpisodeArchive
from asyncwebrl.common.localstack import ServiceProcess, free_port, wait_for_port
from asyncwebrl.v1 import buffer_pb2, env_pb2

TOKEN = "viewer-test-token"
PREFIX = "viewer-test:"
SECRET = b"TOP-SECRET-DO-NOT-SERVE"
ROOT = pathlib.Path(__file__).resolve().parents[2]
GALLERY = ROOT / "docs" / "gallery" / "viewer.png"
INJECTION = ('Let me think. <script>window.__pwned = 1; alert("script")</script>'
             '<img src=x onerror="window.__pwned = 2; alert(document.domain)"> <b id="injected">bold</b>')
W, H = 640, 360
CLICK = [250, 400]   # step 0: the blue "Search products" button, pixel (160, 144)
TYPE_AT = [750, 250]  # step 1: the search box, pixel (480, 90)


def _font(size: int):
    return ImageFont.load_default(size=size)


def _page(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (W, H), (248, 249, 251))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, W, 44), fill=(31, 41, 55))
    d.text((16, 12), "webgym-lite shop", fill=(255, 255, 255), font=_font(18))
    d.text((16, 58), title, fill=(31, 35, 40), font=_font(20))
    return img, d


def _encode(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def screenshots() -> list[tuple[bytes, str]]:
    """Three pages of a little shop: the landing page (JPEG), the search page (JPEG), results (PNG)."""
    img, d = _page("Welcome")
    d.text((16, 90), "Find anything in our catalogue.", fill=(89, 99, 110), font=_font(15))
    d.rounded_rectangle((80, 124, 240, 164), radius=6, fill=(9, 105, 218))
    d.text((160, 144), "Search products", fill=(255, 255, 255), font=_font(15), anchor="mm")
    d.rectangle((16, 200, 624, 340), outline=(209, 217, 224), fill=(255, 255, 255))
    d.text((32, 216), "Today's deals: shoes, bags, hats", fill=(89, 99, 110), font=_font(15))
    first = _encode(img, "JPEG")

    img, d = _page("Search")
    d.rounded_rectangle((330, 70, 630, 110), radius=6, outline=(9, 105, 218), width=2, fill=(255, 255, 255))
    d.text((342, 90), "Search products…", fill=(140, 149, 159), font=_font(15), anchor="lm")
    d.rounded_rectangle((16, 124, 200, 164), radius=6, fill=(9, 105, 218))
    d.text((108, 144), "Go", fill=(255, 255, 255), font=_font(15), anchor="mm")
    second = _encode(img, "JPEG")

    img, d = _page("Results for \"blue shoes\"")
    for i, (name, price) in enumerate([("Blue running shoes", "$59"), ("Navy sneakers", "$72"),
                                       ("Sky canvas shoes", "$45")]):
        y = 100 + i * 70
        d.rectangle((16, y, 624, y + 56), outline=(209, 217, 224), fill=(255, 255, 255))
        d.rectangle((24, y + 8, 64, y + 48), fill=(9, 105, 218))
        d.text((80, y + 18), name, fill=(31, 35, 40), font=_font(16))
        d.text((560, y + 18), price, fill=(26, 127, 55), font=_font(16))
    third = _encode(img, "PNG")
    return [(first, "image/jpeg"), (second, "image/jpeg"), (third, "image/png")]


def _ref(data: bytes, mime: str) -> env_pb2.ScreenshotRef:
    return env_pb2.ScreenshotRef(sha256=hashlib.sha256(data).hexdigest(), width=W, height=H, mime=mime,
                                 size_bytes=len(data))


def _step(text: str, action: dict, shot: env_pb2.ScreenshotRef, invalid: bool = False) -> buffer_pb2.StepRecord:
    return buffer_pb2.StepRecord(prompt_ids=[1, 2, 3], screenshots=[shot], output_ids=[4, 5], logprobs=[-0.1, -0.2],
                                 versions=[3, 3], text=text, action=json.dumps(action), invalid_action=invalid)


def tool_call(action: dict) -> str:
    return '<tool_call>{"name": "computer_use", "arguments": ' + json.dumps(action) + "}</tool_call>"


def write_archives(run_dir: pathlib.Path, job_id: str) -> dict:
    shots = screenshots()
    blobs = {hashlib.sha256(b).hexdigest(): b for b, _ in shots}
    refs = [_ref(b, m) for b, m in shots]
    click = {"action": "click", "coordinate": CLICK}
    typed = {"action": "type", "text": "blue shoes", "coordinate": TYPE_AT, "enter": True}
    answer = {"action": "answer", "text": "$59"}
    good = buffer_pb2.EpisodeRecord(
        episode_id="g1-e0", reward=1.0, success=True, length=3, finish_reason="answer", steps=[
            _step("I open the product search. " + tool_call(click), click, refs[0]),
            _step("Now I search for the shoes. " + tool_call(typed), typed, refs[1]),
            _step("The blue running shoes cost $59. " + tool_call(answer), answer, refs[2]),
        ])
    scroll = {"action": "scroll", "direction": "down", "coordinate": [500, 700]}
    bad = buffer_pb2.EpisodeRecord(
        episode_id="g1-e1", reward=0.0, success=False, length=2, finish_reason="step_limit", judged=True,
        judge_text="judge says: " + INJECTION, judge_latency_s=1.2, steps=[
            _step(INJECTION, {"action": "wait", "seconds": 0}, refs[0], invalid=True),
            _step("Scrolling. " + tool_call(scroll), scroll, refs[0]),
        ])
    group = buffer_pb2.Group(group_id="g1", job_id=job_id, task="webgym-lite/shop/find-price", seed=7,
                             difficulty="easy", episodes=[good, bad], created_unix_ms=1)
    episodes = run_dir / job_id / "episodes"
    train = EpisodeArchive(episodes / "train")
    assert train.add(group, good, blobs, version=3) == "g1-e0"
    assert train.add(group, bad, blobs, version=3) == "g1-e1"
    # Evaluations: listed in numeric order; "e1" in eval-2 is only a suffix of "ev-g2-e1".
    evaluation = buffer_pb2.Group(group_id="ev-g2", job_id=job_id, task="webgym-lite/mail/archive-message",
                                  seed=11, difficulty="medium", created_unix_ms=2)
    for source, eid in (("eval-2", "ev-g2-e1"), ("eval-10", "e1")):
        ep = buffer_pb2.EpisodeRecord(episode_id=eid, reward=1.0, success=True, length=1, finish_reason="answer",
                                      steps=[_step(tool_call(answer), answer, refs[2])])
        assert EpisodeArchive(episodes / source).add(evaluation, ep, blobs, version=4) == eid
    (episodes / "not-a-source").mkdir()
    return {"blobs": blobs, "refs": refs}


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("viewer")
    run_dir = base / "runs"
    run_dir.mkdir()
    port = free_port()
    proc = ServiceProcess("api", ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text",
                                  "--api-port", str(port), "--run-dir", str(run_dir)],
                          {"ASYNCWEBRL_API_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
                          base / "api.log")
    proc.wait_ready()
    wait_for_port(port, 30, proc.proc)
    proc.api_port, proc.run_dir, proc.base = port, run_dir, base
    yield proc
    assert proc.stop() == 0, proc.logs()[-2000:]


@pytest.fixture(scope="module")
def job(api):
    status, _, body = call(api, "POST", "/v1/jobs", {"name": "viewer"})
    assert status == 201, body
    job_id = body["id"]
    made = write_archives(api.run_dir, job_id)
    # Secrets beside and outside the run dir, and symlinks that would lead to them.
    (api.run_dir / "secret.json").write_bytes(SECRET)
    outside = api.base / "outside"
    leak = EpisodeArchive(outside)
    group = buffer_pb2.Group(group_id="leak", job_id=job_id, task=SECRET.decode())
    leak.add(group, buffer_pb2.EpisodeRecord(episode_id="leak", length=0), {}, version=0)
    (outside / "blobs" / "secret").write_bytes(SECRET)
    episodes = api.run_dir / job_id / "episodes"
    os.symlink(outside, episodes / "eval-7")
    fake_sha = hashlib.sha256(SECRET).hexdigest()
    os.symlink(outside / "blobs" / "secret", episodes / "train" / "blobs" / fake_sha)
    made.update(job_id=job_id, fake_sha=fake_sha)
    return made


def call(api, method: str, path: str, body=None, token: str | None = TOKEN) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.getheader("content-type", "").startswith(("application/json", "application/problem+json")):
        return resp.status, dict(resp.getheaders()), json.loads(data)
    return resp.status, dict(resp.getheaders()), data


def test_json_routes(api, job):
    j = job["job_id"]
    status, _, page = call(api, "GET", f"/v1/jobs/{j}/episodes")
    assert status == 200, page
    assert page["job_id"] == j and page["source"] == "train" and page["total"] == 2
    assert page["sources"] == ["train", "eval-2", "eval-10"]  # eval-7 leads outside the run dir
    assert [e["id"] for e in page["episodes"]] == ["g1-e1", "g1-e0"]  # newest first
    first = page["episodes"][1]
    assert first["success"] is True and first["reward"] == 1.0 and first["length"] == 3
    assert first["task"] == "webgym-lite/shop/find-price" and first["difficulty"] == "easy"
    assert first["version"] == 3 and first["finish_reason"] == "answer" and first["source"] == "train"
    assert page["next_page_token"] == ""

    seen, token = [], ""
    for _ in range(4):
        status, _, page = call(api, "GET", f"/v1/jobs/{j}/episodes?source=train&page_size=1&page_token={token}")
        assert status == 200 and len(page["episodes"]) <= 1
        seen += [e["id"] for e in page["episodes"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == ["g1-e1", "g1-e0"]

    status, _, page = call(api, "GET", f"/v1/jobs/{j}/episodes?source=eval-10")
    assert status == 200 and [e["id"] for e in page["episodes"]] == ["e1"] and page["episodes"][0]["source"] == "eval-10"
    status, _, page = call(api, "GET", f"/v1/jobs/{j}/episodes?source=eval-99")
    assert status == 200 and page["episodes"] == [] and page["total"] == 0 and page["sources"][0] == "train"

    status, _, doc = call(api, "GET", f"/v1/jobs/{j}/episodes/train/g1-e0")
    assert status == 200, doc
    assert doc["id"] == "g1-e0" and doc["success"] is True and len(doc["steps"]) == 3
    s0, s1, s2 = doc["steps"]
    assert s0["action"] == {"action": "click", "coordinate": CLICK} and not s0["invalid"]
    assert s1["action"]["action"] == "type" and s1["action"]["coordinate"] == TYPE_AT
    assert s2["action"] == {"action": "answer", "text": "$59"} and s2["reward"] == 1.0 and s0["reward"] == 0.0
    assert s0["screenshot"] == {"sha256": job["refs"][0].sha256, "width": W, "height": H, "mime": "image/jpeg"}
    # An id that is only the suffix of a kept one is not that episode.
    assert call(api, "GET", f"/v1/jobs/{j}/episodes/eval-2/e1")[0] == 404
    assert call(api, "GET", f"/v1/jobs/{j}/episodes/eval-10/e1")[2]["id"] == "e1"
    assert call(api, "GET", f"/v1/jobs/{j}/episodes/eval-2/g1-e0")[0] == 404

    for ref in job["refs"]:
        status, headers, data = call(api, "GET", f"/v1/jobs/{j}/episodes/train/screenshots/{ref.sha256}")
        assert status == 200 and data == job["blobs"][ref.sha256]
        assert headers["content-type"] == ref.mime
        assert headers["cache-control"] == "private, max-age=86400"
    status, headers, body = call(api, "GET", f"/v1/jobs/{j}/episodes/train/screenshots/{'0' * 64}")
    assert status == 404 and headers["content-type"].startswith("application/problem+json")
    assert body["detail"].startswith("sha256:")


def test_auth_unknown_job_and_bad_parameters(api, job):
    j = job["job_id"]
    sha = job["refs"][0].sha256
    routes = [f"/v1/jobs/{j}/episodes", f"/v1/jobs/{j}/episodes/train/g1-e0",
              f"/v1/jobs/{j}/episodes/train/screenshots/{sha}"]
    for path in routes:
        for token in (None, "wrong-token"):
            status, headers, body = call(api, "GET", path, token=token)
            assert status == 401, (path, body)
            assert headers["content-type"].startswith("application/problem+json")
            assert body["detail"].startswith("authorization:")
    for path in routes:
        status, _, body = call(api, "GET", path.replace(j, "no-such-job"))
        assert status == 404 and body["detail"].startswith("job_id:"), (path, body)

    bad = {
        f"/v1/jobs/{j}/episodes?source=..%2F..%2F": "source:",
        f"/v1/jobs/{j}/episodes?source=train%00": "source:",
        f"/v1/jobs/{j}/episodes?source=eval-1234567": "source:",
        f"/v1/jobs/{j}/episodes?source=Train": "source:",
        f"/v1/jobs/{j}/episodes?page_token=bm90LWEtdG9rZW4": "page_token:",
        f"/v1/jobs/{j}/episodes/..%2e/g1-e0": "source:",
        f"/v1/jobs/{j}/episodes/train/%2A": "episode_id:",
        f"/v1/jobs/{j}/episodes/train/{'a' * 201}": "episode_id:",
        f"/v1/jobs/{j}/episodes/train/screenshots/{sha.upper()}": "sha256:",
        f"/v1/jobs/{j}/episodes/train/screenshots/..%2e": "sha256:",
        f"/v1/jobs/{j}/episodes/train%2e%2e/screenshots/{sha}": "source:",
    }
    for path, field in bad.items():
        status, headers, body = call(api, "GET", path)
        assert status == 400, (path, status, body)
        assert headers["content-type"].startswith("application/problem+json") and body["detail"].startswith(field)
    status, _, body = call(api, "GET", f"/v1/jobs/{j}/episodes?page_size=0")
    assert status == 422 and body["errors"][0]["field"] == "page_size"

    # Ways out of the run dir: 400 or 404, and never a byte of what lies there.
    escapes = [
        f"/v1/jobs/{j}/episodes/train/..", f"/v1/jobs/{j}/episodes/train/..%2F..%2F..%2Fsecret",
        f"/v1/jobs/{j}/episodes/..%2F..%2F/secret", f"/v1/jobs/{j}/episodes/train/%2E%2E%2Fsecret.json",
        f"/v1/jobs/{j}/episodes/train/screenshots/..%2F..%2F..%2F..%2Fsecret.json",
        f"/v1/jobs/{j}/episodes/train/screenshots/../../../secret.json",
        f"/v1/jobs/..%2F/episodes", f"/v1/jobs/{j}%2F..%2F..%2F/episodes/train/x",
        f"/v1/jobs/{j}/episodes?source=eval-7", f"/v1/jobs/{j}/episodes/eval-7/leak",
        f"/v1/jobs/{j}/episodes/eval-7/screenshots/{job['fake_sha']}",
        f"/v1/jobs/{j}/episodes/train/screenshots/{job['fake_sha']}",
        "/viewer/..%2F..%2Fsecret.json", "/viewer/" + "..%2F" * 5 + "etc%2Fpasswd",
    ]
    for path in escapes:
        status, _, body = call(api, "GET", path)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert SECRET not in raw, path
        if path.endswith("source=eval-7"):
            assert status == 200 and body["episodes"] == [] and "eval-7" not in body["sources"]
        else:
            assert status in (400, 404), (path, status, body)

    # The page: no token, no data in it, but a job id it can name.
    status, headers, html = call(api, "GET", f"/viewer/{j}", token=None)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert j.encode() not in html and b"g1-e0" not in html
    assert "script-src 'sha256-" in headers["content-security-policy"]
    assert b"http://" not in html and b"https://" not in html  # nothing from outside
    status, _, body = call(api, "GET", "/viewer/not%20a%20job!", token=None)
    assert status == 400 and body["detail"].startswith("job_id:")


def _red(pixel) -> bool:
    r, g, b = pixel[:3]
    return r > 200 and g < 80 and b < 80


async def _canvas_pixel(page, x: float, y: float) -> list[int]:
    return await page.evaluate("([x, y]) => Array.from(document.getElementById('step-canvas').getContext('2d')"
                               ".getImageData(Math.floor(x), Math.floor(y), 1, 1).data)", [x, y])


def _page_red_near(shot: Image.Image, box: dict, x: float, y: float) -> bool:
    """Is there marker red at canvas pixel (x, y) in a screenshot of the page (3x3 around it)?"""
    sx, sy = box["width"] / W, box["height"] / H
    cx, cy = round(box["x"] + (x + 0.5) * sx), round(box["y"] + (y + 0.5) * sy)
    return any(_red(shot.getpixel((cx + dx, cy + dy))) for dx in (-1, 0, 1) for dy in (-1, 0, 1))


async def test_viewer_page_in_chromium(api, job, browser, tmp_path):
    j = job["job_id"]
    base = f"http://127.0.0.1:{api.api_port}"
    context = await browser.new_context(viewport={"width": 1360, "height": 820})
    page = await context.new_page()
    dialogs, errors, requests = [], [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))

    await page.goto(f"{base}/viewer/{j}#token={TOKEN}")
    await page.wait_for_selector("#episodes tbody tr")
    assert "token" not in page.url  # the fragment is cleared from the address bar
    assert await page.text_content("#job-id") == j
    rows = await page.eval_on_selector_all(
        "#episodes tbody tr", "rs => rs.map(r => [r.dataset.episodeId, r.dataset.outcome,"
        " r.querySelector('.outcome').textContent, r.querySelector('.task').textContent])")
    assert rows == [["g1-e1", "fail", "fail", "webgym-lite/shop/find-price"],
                    ["g1-e0", "success", "success", "webgym-lite/shop/find-price"]]
    colours = await page.eval_on_selector_all("#episodes tbody .badge", "bs => bs.map(b => getComputedStyle(b).color)")
    assert colours == ["rgb(207, 34, 46)", "rgb(26, 127, 55)"]
    assert await page.eval_on_selector_all("#source-select option", "os => os.map(o => o.value)") == \
        ["train", "eval-2", "eval-10"]

    # Step 0: a click, marked where it landed.
    await page.click('#episodes tbody tr[data-episode-id="g1-e0"]')
    await page.wait_for_selector('#step-canvas[data-ready="1"][data-step="0"]')
    assert await page.text_content("#step-index") == "Step 1 / 3"
    assert (await page.text_content("#step-text")).startswith("I open the product search. <tool_call>")
    assert json.loads(await page.text_content("#step-action")) == {"action": "click", "coordinate": CLICK}
    assert await page.get_attribute("#step-invalid", "data-invalid") == "0"
    x0, y0 = CLICK[0] / 1000 * W, CLICK[1] / 1000 * H
    x1, y1 = TYPE_AT[0] / 1000 * W, TYPE_AT[1] / 1000 * H
    assert _red(await _canvas_pixel(page, x0, y0))
    assert not _red(await _canvas_pixel(page, x1, y1))
    await page.mouse.move(0, 0)
    shot_path = tmp_path / "viewer.png"
    await page.screenshot(path=str(shot_path), full_page=True)
    if os.environ.get("ASYNCWEBRL_WRITE_GALLERY"):  # `make gallery`; a plain test run leaves the tree clean
        GALLERY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot_path, GALLERY)
    box = await page.locator("#step-canvas").bounding_box()
    with Image.open(shot_path) as im:
        im = im.convert("RGB")
        assert _page_red_near(im, box, x0, y0) and not _page_red_near(im, box, x1, y1)
        # The screenshot is drawn under the marker: the button's blue is there beside it.
        bx, by = round(box["x"] + 95 * box["width"] / W), round(box["y"] + 130 * box["height"] / H)
        r, g, b = im.getpixel((bx, by))
        assert b > 180 and r < 60, (r, g, b)

    # Step 1 by the arrow key: a type action, the marker moved.
    await page.keyboard.press("ArrowRight")
    await page.wait_for_selector('#step-canvas[data-ready="1"][data-step="1"]')
    assert await page.text_content("#step-index") == "Step 2 / 3"
    action = json.loads(await page.text_content("#step-action"))
    assert action["action"] == "type" and action["text"] == "blue shoes" and action["coordinate"] == TYPE_AT
    assert _red(await _canvas_pixel(page, x1, y1)) and not _red(await _canvas_pixel(page, x0, y0))
    await page.screenshot(path=str(tmp_path / "step1.png"))
    with Image.open(tmp_path / "step1.png") as im:
        im = im.convert("RGB")
        assert _page_red_near(im, box, x1, y1) and not _page_red_near(im, box, x0, y0)

    # The last step by the button: the answer, no marker, the reward.
    await page.click("#next-step")
    await page.wait_for_selector('#step-canvas[data-ready="1"][data-step="2"]')
    assert json.loads(await page.text_content("#step-action")) == {"action": "answer", "text": "$59"}
    assert (await page.text_content("#step-reward")).startswith("1")
    assert await page.get_attribute("#step-canvas", "data-marker") == ""
    assert not _red(await _canvas_pixel(page, x0, y0)) and not _red(await _canvas_pixel(page, x1, y1))
    assert await page.is_disabled("#next-step")
    await page.keyboard.press("ArrowLeft")
    await page.wait_for_selector('#step-canvas[data-ready="1"][data-step="1"]')

    # Model output that is markup stays text.
    await page.click('#episodes tbody tr[data-episode-id="g1-e1"]')
    await page.wait_for_selector('#step-canvas[data-ready="1"][data-step="0"]')
    assert await page.text_content("#step-text") == INJECTION
    assert await page.get_attribute("#step-invalid", "data-invalid") == "1"
    assert (await page.text_content("#judge-text")).endswith(INJECTION)
    assert await page.text_content("#judge-verdict") == "Verdict FAIL · 1.20 s", "latency beside the verdict"
    await page.wait_for_timeout(300)
    assert await page.evaluate("window.__pwned") is None
    assert await page.evaluate("document.querySelectorAll('script').length") == 1
    assert await page.query_selector("#injected") is None and await page.query_selector('img[src="x"]') is None
    assert dialogs == []
    await page.click("#next-step")
    await page.wait_for_selector('#step-canvas[data-ready="1"][data-step="1"]')
    assert _red(await _canvas_pixel(page, 500 / 1000 * W, 700 / 1000 * H))  # a scroll at a point

    # Another source.
    await page.select_option("#source-select", "eval-10")
    await page.wait_for_function("() => document.querySelectorAll('#episodes tbody tr').length === 1 && "
                                 "document.querySelector('#episodes tbody tr').dataset.episodeId === 'e1'")
    assert await page.is_hidden("#episode")
    assert errors == [] and dialogs == []
    assert all(u.startswith((base + "/", f"blob:{base}/")) for u in requests), requests  # nothing from outside
    assert not any(u.endswith("/x") for u in requests)  # the injected <img src=x> never loaded
    await context.close()


async def test_viewer_asks_for_a_token(api, job, browser):
    j = job["job_id"]
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{api.api_port}/viewer/{j}")
    await page.wait_for_selector("#token-form", state="visible")
    assert await page.is_hidden("#list")
    await page.fill("#token-input", "wrong")
    await page.click("#token-submit")
    await page.wait_for_function("() => document.getElementById('token-error').textContent.includes('refused')")
    assert await page.is_hidden("#list")
    await page.fill("#token-input", TOKEN)
    await page.click("#token-submit")
    await page.wait_for_selector("#episodes tbody tr")
    assert await page.evaluate("sessionStorage.getItem('asyncwebrl.viewer.token')") == TOKEN
    # Kept for the tab: a reload needs no form.
    await page.reload()
    await page.wait_for_selector("#episodes tbody tr")
    assert await page.is_hidden("#token-form")
    await context.close()
