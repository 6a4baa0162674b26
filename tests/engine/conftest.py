from __future__ import annotations

import base64
import io
import json
import pathlib
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from asyncwebrl.common.localstack import EngineProcess
from asyncwebrl.common.models.tiny import SHIPPED

API_KEY = "engine-key"


def png(seed: int, h: int = 240, w: int = 320) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def call(url: str, path: str, body: dict | None = None, key: str | None = API_KEY, timeout: float = 120,
         raw: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text.startswith((b"{", b"[")) else {"text": text.decode()}
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text.startswith(b"{") else {"text": text.decode()}


def wait_running(url: str, timeout: float = 60) -> None:
    """Until the engine has a request in its running batch."""
    import time

    deadline = time.monotonic() + timeout
    while call(url, "/model_info")[1]["running"] == 0:
        assert time.monotonic() < deadline, "no request started"
        time.sleep(0.02)


def prompt(text: str = "Click the button", images: int = 1) -> str:
    return (
        "<|im_start|>user\n" + text + "<|vision_start|><|image_pad|><|vision_end|>" * images
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> pathlib.Path:
    """Copies of the shipped tiny checkpoints in a directory the engines may load from."""
    root = tmp_path_factory.mktemp("models")
    for family in ("qwen2_5_vl", "qwen3_vl"):
        shutil.copytree(SHIPPED / family, root / family)
    return root


def start_engine(models_root: pathlib.Path, family: str, log_dir: pathlib.Path, *extra: str) -> EngineProcess:
    engine = EngineProcess(
        ["--model-path", str(models_root / family), "--model-roots", str(models_root), "--device", "cpu",
         "--max-batch-size", "8", *extra],
        log_dir / f"engine-{family}.log",
        env={"ASYNCWEBRL_API_KEY": API_KEY},
    )
    engine.wait_ready()
    return engine


@pytest.fixture(scope="module")
def engine(models_root, tmp_path_factory):
    e = start_engine(models_root, "qwen2_5_vl", tmp_path_factory.mktemp("logs"))
    yield e
    assert e.stop() == 0, e.logs()[-3000:]
