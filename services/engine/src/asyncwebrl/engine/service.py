"""SGLang's native HTTP API, the subset the platform uses, with SGLang's field names.

Every body is checked before it reaches the engine: a bad one gets 400 with a
message naming the field, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import threading
from collections import OrderedDict
import logging
import pathlib
import time
import uuid

import aiohttp
import numpy as np
import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from asyncwebrl.common.agent.prompt import expand_image_tokens, image_pad_runs
from asyncwebrl.common.agent.vision import BadImage, ImageBatch, decode_image, process_images
from asyncwebrl.common.models import broadcast
from asyncwebrl.engine import metrics
from asyncwebrl.engine.config import EngineConfig
from asyncwebrl.engine.core import Engine, GenRequest, SamplingParams
from asyncwebrl.engine.errors import BadRequest

log = logging.getLogger("asyncwebrl.engine")

GENERATE_FIELDS = {
    "text", "input_ids", "image_data", "sampling_params", "rid", "return_logprob", "logprob_start_len",
    "top_logprobs_num", "return_text_in_logprobs", "stream", "modalities", "return_prompt_token_ids",
}
# Sampling parameters whose SGLang meaning the engine implements.
SAMPLING_FIELDS = {
    "max_new_tokens", "temperature", "top_p", "top_k", "stop", "stop_token_ids", "ignore_eos",
    "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim", "sampling_seed",
}
# Accepted only at their neutral value: anything else would be silently wrong.
NEUTRAL_SAMPLING = {"n": 1, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                    "repetition_penalty": 1.0, "min_new_tokens": 0}
# SGLang's UpdateWeightFromDiskReqInput; the GPU-only switches are accepted and have no effect here.
UPDATE_FIELDS = {
    "model_path", "load_format", "abort_all_requests", "weight_version", "flush_cache", "is_async",
    "torch_empty_cache", "keep_pause", "recapture_cuda_graph", "token_step",
}
# SGLang's InitWeightsUpdateGroupReqInput, UpdateWeightsFromDistributedReqInput (0.5.23 adds selector)
# and DestroyWeightsUpdateGroupReqInput, with BaseReq's rid and http_worker_ipc.
BASE_REQ_FIELDS = {"rid", "http_worker_ipc"}
INIT_GROUP_FIELDS = {"master_address", "master_port", "rank_offset", "world_size", "group_name", "backend",
                     *BASE_REQ_FIELDS}
DISTRIBUTED_FIELDS = {"names", "dtypes", "shapes", "group_name", "flush_cache", "abort_all_requests",
                      "weight_version", "load_format", "selector", "torch_empty_cache", *BASE_REQ_FIELDS}
DESTROY_GROUP_FIELDS = {"group_name", *BASE_REQ_FIELDS}
ADMIN_PATHS = ("/update_weights_from_disk", "/pause_generation", "/continue_generation",
               "/init_weights_update_group", "/update_weights_from_distributed", "/destroy_weights_update_group")
# How long joining a weight-update group, and each broadcast in it, may wait for the other ranks
# (SGLang leaves torch's default, 30 minutes; a broken sender should not hold a thread that long).
GROUP_TIMEOUT_S = 300.0
MAX_TENSORS = 1 << 16
MAX_RID = 128
MAX_STOP = 16


# How SGLang answers a run of image pads (a prompt expanded by the caller) per model
# family: Qwen2.5-VL's Hugging Face processor raises ValueError on the pad count
# (HTTP 400); Qwen3-VL's build_input_ids takes each pad for an image and fails
# with an uncaught IndexError (HTTP 500).
EXPANDED_RUN_STATUS = {"qwen2_5_vl": 400, "qwen3_vl": 500}


def version_spans(versions: list[str], current: str) -> list[dict]:
    """SGLang's ``meta_info.weight_versions``: runs of equal versions over the output
    tokens as ``{version, start, end}``; with no output, one empty span at ``current``."""
    spans: list[dict] = []
    for i, v in enumerate(versions):
        if spans and spans[-1]["version"] == v:
            spans[-1]["end"] = i + 1
        else:
            spans.append({"version": v, "start": i, "end": i + 1})
    return spans or [{"version": current, "start": 0, "end": 0}]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"object": "error", "message": message, "code": status}, status=status)


def _number(value, field: str, low: float, high: float, integer: bool = False):
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise BadRequest(field, f"must be {kind} in [{low:g}, {high:g}], got {str(value)[:40]!r}")
    return value


def _flag(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(field, f"must be true or false, got {str(value)[:40]!r}")
    return value


class ByteLRU:
    """A thread-safe LRU bounded by the bytes of its values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: bytes):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                metrics.IMAGE_CACHE.labels("miss").inc()
                return None
            self._items.move_to_end(key)
            metrics.IMAGE_CACHE.labels("hit").inc()
            return item[0]

    def put(self, key: bytes, value, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped


class Server:
    def __init__(self, config: EngineConfig, engine: Engine, policy=None, vocab: int | None = None) -> None:
        """``policy`` and ``vocab``: the engine's own model unless given (a stand-in engine has none)."""
        self.config = config
        self.engine = engine
        self.policy = policy or engine.policy
        self.vocab = vocab if vocab is not None else int(self.policy.model.get_input_embeddings().weight.shape[0])
        roots = config.model_roots or (str(pathlib.Path(config.model_path).resolve().parent),)
        self.model_roots = tuple(pathlib.Path(r).resolve() for r in roots)
        self.image_dir = pathlib.Path(config.image_dir).resolve() if config.image_dir else None
        self.model_path = config.model_path
        self.stopping = False
        self.loading = 0  # weight loads in progress (/ready is false meanwhile)
        self._http: aiohttp.ClientSession | None = None
        self.image_cache = ByteLRU(config.image_cache_mb * 1024 * 1024)
        self.groups: dict[str, object] = {}  # group_name -> torch ProcessGroup (weight-update groups)
        self._joining: set[str] = set()
        self._receiving = asyncio.Lock()  # one broadcast received at a time, as SGLang's scheduler does
        # SGLang's tokenizer manager keeps a /generate out of the scheduler while paused (is_pause_cond), and
        # its model_update_lock lets a weight update made while not paused wait for every /generate in flight
        # to end, holding new ones meanwhile. The same here, before the engine's queue, where no abort reaches.
        self._gate = asyncio.Condition()
        self._paused = False
        self._in_flight = 0  # /generate calls past the gate
        self._updating = 0  # weight updates waiting for them, or under way

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._auth])
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/update_weights_from_disk", self.update_weights)
        app.router.add_post("/init_weights_update_group", self.init_group)
        app.router.add_post("/update_weights_from_distributed", self.update_distributed)
        app.router.add_post("/destroy_weights_update_group", self.destroy_group)
        app.router.add_post("/pause_generation", self.pause)
        app.router.add_post("/continue_generation", self.resume)
        app.router.add_post("/abort_request", self.abort)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health_generate)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/model_info", self.model_info)
        app.router.add_get("/get_model_info", self.model_info)
        app.router.add_get("/metrics", self.metrics)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app) -> None:
        if self._http is not None:
            await self._http.close()
        for name in list(self.groups):
            broadcast.destroy_group(self.groups.pop(name))

    # --- auth ----------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        path = request.path
        if path in ("/health", "/metrics", "/ready"):
            return await handler(request)
        admin = path in ADMIN_PATHS
        key = (self.config.admin_api_key or self.config.api_key) if admin else self.config.api_key
        if key:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return _error(401, "missing or wrong API key (Authorization: Bearer <key>)")
        try:
            return await handler(request)
        except BadRequest as exc:
            metrics.REJECTED.labels(path).inc()
            return _error(exc.status, str(exc))
        except web.HTTPRequestEntityTooLarge:
            metrics.REJECTED.labels(path).inc()
            return _error(413, f"body: larger than {self.config.max_body_bytes} bytes")

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - aiohttp/json raise several kinds
            raise BadRequest("body", f"not valid JSON: {str(exc)[:100]}") from exc
        if not isinstance(body, dict):
            raise BadRequest("body", "must be a JSON object")
        return body

    # --- /generate -------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.Response:
        if self.stopping:
            return _error(503, "shutting down")
        body = await self._body(request)
        unknown = sorted(set(body) - GENERATE_FIELDS)
        if unknown:
            raise BadRequest(unknown[0], "not a field of /generate this engine supports")
        if body.get("stream"):
            raise BadRequest("stream", "streaming is not supported by the embedded engine")
        if body.get("top_logprobs_num"):
            raise BadRequest("top_logprobs_num", "only 0 is supported")
        if body.get("logprob_start_len") not in (None, -1):
            raise BadRequest("logprob_start_len", "only -1 (output tokens) is supported")
        params = self._sampling(body.get("sampling_params"))
        return_logprob = _flag(body.get("return_logprob", False), "return_logprob")
        return_prompt_ids = _flag(body.get("return_prompt_token_ids", False), "return_prompt_token_ids")
        rid = body.get("rid") or uuid.uuid4().hex
        if not isinstance(rid, str) or len(rid) > MAX_RID:
            raise BadRequest("rid", f"must be a string of at most {MAX_RID} characters")
        raw_images = await self._images(body.get("image_data"))
        loop = asyncio.get_running_loop()
        # Decoding and resizing screenshots is CPU work: off the event loop.
        batch = await loop.run_in_executor(None, self._prepare_images, raw_images) if raw_images else None
        ids = self._prompt_ids(body, batch.token_counts if batch else [])
        if len(ids) + params.max_new_tokens > self.engine.max_positions:
            raise BadRequest("sampling_params.max_new_tokens",
                             f"prompt ({len(ids)}) + max_new_tokens exceeds the context of {self.engine.max_positions}")
        future = loop.create_future()

        def done(r: GenRequest) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(r))

        gen = GenRequest(rid=rid, input_ids=ids, params=params, return_logprob=return_logprob, on_done=done)
        if params.sampling_seed is not None:
            gen.generator = torch.Generator(device="cpu").manual_seed(params.sampling_seed)
        if batch:
            gen.pixel_values = torch.from_numpy(batch.pixel_values)
            gen.image_grid_thw = torch.from_numpy(batch.grid_thw)
        async with self._gate:
            await self._gate.wait_for(lambda: not self._paused and not self._updating)
            self._in_flight += 1
        try:
            self.engine.submit(gen)
            try:
                result = await asyncio.shield(future)
            except asyncio.CancelledError:
                # The caller went away: free the slot.
                self.engine.command(lambda: self.engine.abort(rid))
                raise
        finally:
            async with self._gate:
                self._in_flight -= 1
                self._gate.notify_all()
        out = self._response(result)
        if return_prompt_ids:
            out["prompt_token_ids"] = list(result.input_ids)
        return web.json_response(out)

    def _response(self, r: GenRequest) -> dict:
        spans = version_spans(r.versions, self.engine.weight_version)
        meta = {
            "id": r.rid,
            "finish_reason": r.finish,
            "prompt_tokens": len(r.input_ids),
            "completion_tokens": len(r.output_ids),
            "cached_tokens": 0,
            "weight_version": spans[-1]["version"],
            "weight_versions": spans,
            "e2e_latency": time.monotonic() - r.created,
        }
        if r.return_logprob:
            meta["output_token_logprobs"] = [[lp, tok, None] for lp, tok in zip(r.logprobs, r.output_ids)]
        return {"text": r.text or "", "output_ids": r.output_ids, "meta_info": meta}

    def _sampling(self, raw) -> SamplingParams:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadRequest("sampling_params", "must be an object (batched requests are not supported)")
        for name, neutral in NEUTRAL_SAMPLING.items():
            if name in raw and raw[name] not in (None, neutral):
                raise BadRequest(f"sampling_params.{name}", f"only {neutral} is supported by the embedded engine")
        unknown = sorted(set(raw) - SAMPLING_FIELDS - set(NEUTRAL_SAMPLING))
        if unknown:
            raise BadRequest(f"sampling_params.{unknown[0]}", "not supported by the embedded engine")
        p = SamplingParams(max_new_tokens=self.config.default_max_new_tokens)
        f = "sampling_params."
        if raw.get("max_new_tokens") is not None:
            p.max_new_tokens = _number(raw["max_new_tokens"], f + "max_new_tokens", 1,
                                       self.config.max_new_tokens_limit, integer=True)
        if raw.get("temperature") is not None:
            p.temperature = float(_number(raw["temperature"], f + "temperature", 0, 100))
        if raw.get("top_p") is not None:
            p.top_p = float(_number(raw["top_p"], f + "top_p", 1e-6, 1))
        if raw.get("top_k") is not None:
            p.top_k = _number(raw["top_k"], f + "top_k", -1, 1 << 20, integer=True)
            if p.top_k == 0:
                raise BadRequest(f + "top_k", "must be -1 (all) or positive")
        stop = raw.get("stop")
        if stop is not None:
            stop = [stop] if isinstance(stop, str) else stop
            if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(
                isinstance(s, str) and 0 < len(s) <= 256 for s in stop
            ):
                raise BadRequest(f + "stop", f"must be a string or a list of at most {MAX_STOP} non-empty strings")
            p.stop = tuple(stop)
        ids = raw.get("stop_token_ids")
        if ids is not None:
            if not isinstance(ids, list) or len(ids) > 64:
                raise BadRequest(f + "stop_token_ids", "must be a list of at most 64 token ids")
            p.stop_token_ids = tuple(_number(i, f + "stop_token_ids", 0, self.vocab - 1, True) for i in ids)
        for name in ("ignore_eos", "skip_special_tokens"):
            if raw.get(name) is not None:
                setattr(p, name, _flag(raw[name], f + name))
        if raw.get("sampling_seed") is not None:
            p.sampling_seed = _number(raw["sampling_seed"], f + "sampling_seed", 0, 2**63 - 1, integer=True)
        return p

    def _prompt_ids(self, body: dict, counts: list[int]) -> list[int]:
        text, ids = body.get("text"), body.get("input_ids")
        if (text is None) == (ids is None):
            raise BadRequest("text", "give exactly one of text and input_ids")
        if text is not None:
            if not isinstance(text, str):
                raise BadRequest("text", "must be a string (batched requests are not supported)")
            if len(text) > self.config.max_prompt_tokens * 16:
                raise BadRequest("text", "too long")
            ids = self.policy.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not isinstance(ids, list) or (ids and isinstance(ids[0], list)):
                raise BadRequest("input_ids", "must be a list of token ids (batched requests are not supported)")
            if len(ids) > self.config.max_prompt_tokens:
                raise BadRequest("input_ids", f"longer than {self.config.max_prompt_tokens} tokens")
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab:
                    raise BadRequest("input_ids", f"token ids must be integers in [0, {self.vocab}), got {str(t)[:20]}")
        runs = image_pad_runs(ids, self.policy.image_token_id)
        if any(n != 1 for n in runs):
            raise BadRequest("input_ids", f"image placeholder runs of {runs} tokens: give one <|image_pad|> per "
                             "image, which the server expands", EXPANDED_RUN_STATUS.get(self.policy.family, 400))
        try:
            ids = expand_image_tokens(ids, self.policy.image_token_id, counts)
        except ValueError as exc:
            raise BadRequest("image_data", str(exc)) from exc
        if not ids:
            raise BadRequest("input_ids" if body.get("input_ids") is not None else "text", "the prompt is empty")
        if len(ids) > self.config.max_prompt_tokens:
            raise BadRequest("input_ids", f"{len(ids)} tokens with images, over {self.config.max_prompt_tokens}")
        return ids

    async def _images(self, raw) -> list[bytes]:
        if raw is None:
            return []
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise BadRequest("image_data", "must be a string or a list of strings")
        if len(items) > self.config.max_images:
            raise BadRequest("image_data", f"more than {self.config.max_images} images")
        return [await self._image_bytes(item, f"image_data[{i}]") for i, item in enumerate(items)]

    def _prepare_images(self, raw_images: list[bytes]) -> ImageBatch:
        """Decode and patch each image, or take it from the cache: in a rollout the
        same screenshot comes back in the next step's prompt (history) and in every
        episode of a group (the first page), so most images are seen twice or more."""
        parts = []
        for i, data in enumerate(raw_images):
            key = hashlib.sha256(data).digest()
            hit = self.image_cache.get(key)
            if hit is None:
                try:
                    hit = process_images(self.policy.image_processor, [decode_image(data)])
                except BadImage as exc:
                    raise BadRequest(f"image_data[{i}]", str(exc)) from exc
                self.image_cache.put(key, hit, hit.pixel_values.nbytes)
            parts.append(hit)
        return ImageBatch(
            np.concatenate([p.pixel_values for p in parts]),
            np.concatenate([p.grid_thw for p in parts]),
            [c for p in parts for c in p.token_counts],
        )

    async def _image_bytes(self, item: str, field: str) -> bytes:
        if item.startswith("data:"):
            header, _, payload = item.partition(",")
            if ";base64" not in header:
                raise BadRequest(field, "data URIs must be base64")
            return self._b64(payload, field)
        if item.startswith(("http://", "https://")):
            if not self.config.allow_image_urls:
                raise BadRequest(field, "image URLs are disabled (--allow-image-urls)")
            return await self._fetch(item, field)
        if item.startswith(("/", "./", "file://")):
            return self._file(item.removeprefix("file://"), field)
        return self._b64(item, field)

    @staticmethod
    def _b64(payload: str, field: str) -> bytes:
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(field, "not base64, a data URI, a file path or a URL") from exc

    def _file(self, path: str, field: str) -> bytes:
        if self.image_dir is None:
            raise BadRequest(field, "file paths are disabled (--image-dir)")
        resolved = pathlib.Path(path).resolve()
        if not resolved.is_relative_to(self.image_dir) or not resolved.is_file():
            raise BadRequest(field, f"no such file under {self.image_dir}")
        if resolved.stat().st_size > 16 * 1024 * 1024:
            raise BadRequest(field, "file larger than 16 MiB")
        return resolved.read_bytes()

    async def _fetch(self, url: str, field: str) -> bytes:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.url_timeout_s))
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    raise BadRequest(field, f"fetching the URL answered {resp.status}")
                data = await resp.content.read(16 * 1024 * 1024 + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise BadRequest(field, f"fetching the URL failed: {type(exc).__name__}") from exc
        if len(data) > 16 * 1024 * 1024:
            raise BadRequest(field, "image larger than 16 MiB")
        return data

    # --- weights, pause, abort ------------------------------------------------

    @contextlib.asynccontextmanager
    async def _model_update(self, abort_all: bool):
        """A weight update's turn (SGLang's model_update_lock writer; none while paused): abort_all_requests
        first, as SGLang does, then wait for every /generate in flight to end, holding new ones."""
        if abort_all:
            await asyncio.wrap_future(self.engine.command(lambda: self.engine.abort(None)))
        async with self._gate:
            exclusive = not self._paused
            if exclusive:
                self._updating += 1
                try:
                    await self._gate.wait_for(lambda: self._in_flight == 0)
                except BaseException:
                    self._updating -= 1
                    self._gate.notify_all()
                    raise
        try:
            yield
        finally:
            if exclusive:
                async with self._gate:
                    self._updating -= 1
                    self._gate.notify_all()

    async def update_weights(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        unknown = sorted(set(body) - UPDATE_FIELDS)
        if unknown:
            raise BadRequest(unknown[0], "not a field of /update_weights_from_disk")
        path = body.get("model_path")
        if not isinstance(path, str) or not path:
            raise BadRequest("model_path", "required: a checkpoint directory")
        resolved = pathlib.Path(path).resolve()
        if not any(resolved.is_relative_to(root) for root in self.model_roots):
            raise BadRequest("model_path", f"must be under {', '.join(map(str, self.model_roots))} (--model-roots)")
        if body.get("load_format") not in (None, "auto", "safetensors"):
            raise BadRequest("load_format", "only safetensors checkpoints are supported")
        version = body.get("weight_version")
        if version is not None and (not isinstance(version, (str, int)) or isinstance(version, bool)
                                    or not 0 < len(str(version)) <= 64):
            raise BadRequest("weight_version", "must be a string (or integer) of 1-64 characters")
        abort_all = _flag(body.get("abort_all_requests", False), "abort_all_requests")
        _flag(body.get("flush_cache", True), "flush_cache")
        new_version = str(version) if version is not None else self.engine.weight_version
        async with self._model_update(abort_all):
            future = self.engine.command(lambda: self.engine.update_weights(str(resolved), new_version, abort_all))
            self.loading += 1
            try:
                result = await asyncio.wrap_future(future)
            except (OSError, ValueError) as exc:
                return web.json_response({"success": False, "message": str(exc)[:500]}, status=400)
            finally:
                self.loading -= 1
        metrics.WEIGHT_VERSION.clear()
        metrics.WEIGHT_VERSION.labels(new_version).set(1)
        self.model_path = str(resolved)
        return web.json_response({
            "success": True,
            "message": f"loaded {result['bytes']} bytes in {result['seconds']:.3f}s",
            "num_paused_requests": self.engine.stats()["running"] if self.engine.paused else 0,
        })

    # --- weights by broadcast (SGLang's update-from-distributed API) ------------------------------

    @staticmethod
    def _outcome(success: bool, message: str) -> web.Response:
        """SGLang's answer to the group and distributed-update calls: 200, or 400 on failure."""
        return web.json_response({"success": success, "message": message}, status=200 if success else 400)

    async def _fields(self, request: web.Request, allowed: set[str], route: str) -> dict:
        body = await self._body(request)
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise BadRequest(unknown[0], f"not a field of {route}")
        for name in BASE_REQ_FIELDS:
            if body.get(name) is not None and not isinstance(body[name], str):
                raise BadRequest(name, "must be a string")
        return body

    @staticmethod
    def _group_name(body: dict) -> str:
        name = body.get("group_name", broadcast.DEFAULT_GROUP)
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            raise BadRequest("group_name", "must be a non-empty string of at most 256 characters")
        return name

    async def init_group(self, request: web.Request) -> web.Response:
        body = await self._fields(request, INIT_GROUP_FIELDS, "/init_weights_update_group")
        for name in ("master_address", "master_port", "rank_offset", "world_size"):
            if body.get(name) is None:
                raise BadRequest(name, "required")
        address = body["master_address"]
        if not isinstance(address, str) or not 0 < len(address) <= 253:
            raise BadRequest("master_address", "must be a host name or address")
        port = _number(body["master_port"], "master_port", 1, 65535, integer=True)
        world = _number(body["world_size"], "world_size", 2, 1 << 16, integer=True)
        rank = _number(body["rank_offset"], "rank_offset", 1, world - 1, integer=True)
        group = self._group_name(body)
        backend = body.get("backend", "nccl")
        if not isinstance(backend, str) or not backend:
            raise BadRequest("backend", "must be a string (gloo, nccl)")
        if group in self.groups or group in self._joining:
            return self._outcome(False, f"Failed to initialize custom process group: group {group!r} already "
                                        "exists; destroy it first.")
        self._joining.add(group)
        log.info("joining weight-update group", extra={"group": group, "master": f"{address}:{port}",
                                                       "rank": rank, "world_size": world, "backend": backend})
        try:
            # Blocks until every rank has joined: in a thread, the engine goes on serving meanwhile.
            pg = await asyncio.to_thread(broadcast.init_group, address, port, rank, world, group, backend,
                                         GROUP_TIMEOUT_S)
        except broadcast.BroadcastError as exc:
            log.warning("joining weight-update group failed", extra={"group": group, "error": str(exc)})
            return self._outcome(False, f"Failed to initialize custom process group: {exc}.")
        finally:
            self._joining.discard(group)
        self.groups[group] = pg
        metrics.WEIGHT_UPDATE_GROUPS.set(len(self.groups))
        return self._outcome(True, "Succeeded to initialize custom process group.")

    async def destroy_group(self, request: web.Request) -> web.Response:
        body = await self._fields(request, DESTROY_GROUP_FIELDS, "/destroy_weights_update_group")
        group = self._group_name(body)
        pg = self.groups.pop(group, None)
        if pg is None:
            return self._outcome(False, "The group to be destroyed does not exist.")
        metrics.WEIGHT_UPDATE_GROUPS.set(len(self.groups))
        await asyncio.to_thread(broadcast.destroy_group, pg)
        return self._outcome(True, "Succeeded to destroy custom process group.")

    def _tensor_specs(self, body: dict) -> tuple[list[str], list[str], list[list[int]]]:
        names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
        for field, value in (("names", names), ("dtypes", dtypes), ("shapes", shapes)):
            if value is None:
                raise BadRequest(field, "required")
            if not isinstance(value, list) or len(value) > MAX_TENSORS:
                raise BadRequest(field, f"must be a list of at most {MAX_TENSORS} items")
        if not all(isinstance(n, str) and 0 < len(n) <= 512 for n in names):
            raise BadRequest("names", "must be tensor names (non-empty strings)")
        for i, d in enumerate(dtypes):
            if not isinstance(d, str):
                raise BadRequest(f"dtypes[{i}]", "must be a string such as float32 or bfloat16")
            try:
                broadcast.parse_dtype(d)
            except ValueError as exc:
                raise BadRequest(f"dtypes[{i}]", str(exc)) from exc
        for i, shape in enumerate(shapes):
            if not isinstance(shape, list) or len(shape) > 8 or not all(
                    isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 40 for x in shape):
                raise BadRequest(f"shapes[{i}]", "must be a list of at most 8 non-negative integers")
        if len(dtypes) != len(names):
            raise BadRequest("dtypes", f"{len(dtypes)} dtypes for {len(names)} names")
        if len(shapes) != len(names):
            raise BadRequest("shapes", f"{len(shapes)} shapes for {len(names)} names")
        return names, dtypes, shapes

    async def update_distributed(self, request: web.Request) -> web.Response:
        """Receive a broadcast into staging tensors, check them all against the model, and only then
        copy them in (between engine iterations) and take ``weight_version``: a broadcast that fails
        midway, or tensors that do not fit, leave the previous weights and version serving."""
        body = await self._fields(request, DISTRIBUTED_FIELDS, "/update_weights_from_distributed")
        names, dtypes, shapes = self._tensor_specs(body)
        group = self._group_name(body)
        version = body.get("weight_version")
        if version is not None and (not isinstance(version, str) or not 0 < len(version) <= 64):
            raise BadRequest("weight_version", "must be a string of 1-64 characters")
        load_format = body.get("load_format")
        if load_format is not None and not isinstance(load_format, str):
            raise BadRequest("load_format", "must be a string (flattened_bucket) or null")
        if body.get("selector", "all") not in ("target", "draft", "all"):
            raise BadRequest("selector", "must be target, draft or all")
        abort_all = _flag(body.get("abort_all_requests", False), "abort_all_requests")
        for name, default in (("flush_cache", True), ("torch_empty_cache", False)):
            _flag(body.get(name, default), name)
        # SGLang: any load_format but flattened_bucket is one broadcast per tensor.
        fmt = broadcast.FLATTENED_BUCKET if load_format == broadcast.FLATTENED_BUCKET else None
        async with self._model_update(abort_all), self._receiving:
            pg = self.groups.get(group)
            if pg is None:
                metrics.DISTRIBUTED_UPDATES.labels("failed").inc()
                return self._outcome(False, f"Failed to receive weights: Group {group} not in {sorted(self.groups)}."
                                            " Please call `init_weights_update_group` first.")
            self.loading += 1
            try:
                started = time.monotonic()
                try:
                    staged = await asyncio.to_thread(broadcast.receive, pg, names, dtypes, shapes, fmt)
                except broadcast.BroadcastError as exc:
                    # The group is broken (a peer gone, a timeout): it cannot carry another broadcast.
                    metrics.DISTRIBUTED_UPDATES.labels("failed").inc()
                    log.warning("receiving a broadcast failed; weights unchanged",
                                extra={"group": group, "error": str(exc)})
                    return self._outcome(False, f"Failed to receive weights: {exc}")
                metrics.BROADCAST_RECEIVE_SECONDS.observe(time.monotonic() - started)
                try:
                    pairs = await asyncio.to_thread(self.engine.check_weights, staged)
                except ValueError as exc:
                    metrics.DISTRIBUTED_UPDATES.labels("failed").inc()
                    return self._outcome(False, f"Failed to update parameter online: {exc}. Weights unchanged.")
                new_version = version if version is not None else self.engine.weight_version
                await asyncio.wrap_future(self.engine.command(
                    lambda: self.engine.apply_weights(pairs, new_version, abort_all)))
            finally:
                self.loading -= 1
        metrics.DISTRIBUTED_UPDATES.labels("ok").inc()
        metrics.WEIGHT_VERSION.clear()
        metrics.WEIGHT_VERSION.labels(new_version).set(1)
        message = "Succeeded to update parameter online."
        if version is not None:
            message += f" Weight version updated to {version}."
        return self._outcome(True, message)

    async def pause(self, request: web.Request) -> web.Response:
        body = await self._body(request) if request.can_read_body else {}
        mode = body.get("mode", "abort")
        if mode not in ("abort", "in_place"):
            raise BadRequest("mode", "must be abort or in_place")
        async with self._gate:
            self._paused = True
        result = await asyncio.wrap_future(self.engine.command(lambda: self.engine.pause(mode)))
        metrics.PAUSED.set(1)
        metrics.PAUSES.inc()
        # SGLang's answer (http_server.pause_generation), with the engine's counts beside it.
        return web.json_response({"message": "Generation paused successfully.", "status": "ok", **result})

    async def resume(self, request: web.Request) -> web.Response:
        result = await asyncio.wrap_future(self.engine.command(self.engine.resume))
        async with self._gate:
            self._paused = False
            self._gate.notify_all()
        metrics.PAUSED.set(0)
        return web.json_response({"message": "Generation continued successfully.", "status": "ok", **result})

    async def abort(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        rid, abort_all = body.get("rid"), body.get("abort_all", False)
        _flag(abort_all, "abort_all")
        if not abort_all and (not isinstance(rid, str) or not 0 < len(rid) <= MAX_RID):
            raise BadRequest("rid", "give a request id, or abort_all: true")
        target = None if abort_all else rid
        aborted = await asyncio.wrap_future(self.engine.command(lambda: self.engine.abort(target)))
        return web.json_response({"success": True, "aborted": aborted})

    # --- health and info ---------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.stopping or not self.engine._thread.is_alive():
            return web.Response(status=503, text="unhealthy")
        return web.Response(text="ok")

    async def ready(self, request: web.Request) -> web.Response:
        """Can take work now: healthy, and neither paused nor loading weights (a weight update)."""
        health = await self.health(request)
        if health.status != 200:
            return health
        if self.engine.paused or self.loading:
            return web.Response(status=503, text="weight update in progress")
        return web.Response(text="ok")

    async def health_generate(self, request: web.Request) -> web.Response:
        """One greedy token through the whole path, as SGLang's /health does."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        gen = GenRequest(
            rid=f"health-{uuid.uuid4().hex[:8]}", input_ids=[self.policy.tokenizer.pad_token_id or 0],
            params=SamplingParams(max_new_tokens=1, temperature=0), return_logprob=False,
            on_done=lambda r: loop.call_soon_threadsafe(lambda: future.done() or future.set_result(r)),
        )
        self.engine.submit(gen)
        try:
            await asyncio.wait_for(asyncio.shield(future), 20)
        except asyncio.TimeoutError:
            return web.Response(status=503, text="generation did not finish in 20 s")
        return web.Response(text="ok")

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "model_path": self.model_path,
            "tokenizer_path": str(self.policy.path),
            "is_generation": True,
            "model_type": self.policy.family,
            "weight_version": self.engine.weight_version,
            "max_batch_size": self.engine.max_batch_size,
            "device": str(self.engine.device),
            "dtype": str(next(self.policy.model.parameters()).dtype).removeprefix("torch."),
            **self.engine.stats(),
        })

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
