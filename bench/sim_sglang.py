"""A FAKE SGLang server for the scale simulator (``make bench-scale``): no model runs here.

One process serves N fake SGLang endpoints, each on its own loopback port, so the
real rollout gateway and the real weightsync service can drive them unchanged.

What is real: the HTTP layer is the embedded engine's own ``Server``
(``asyncwebrl.engine.service``): the same routes, auth, field checks and 400s,
prompt expansion (one ``<|image_pad|>`` per image, expanded to the count the
gateway computes), ``meta_info`` with ``weight_versions`` spans, pause/continue
and ``update_weights_from_disk`` answers. Only the ``Engine`` under it is
replaced by ``SimEngine``, which spends simulated GPU time by sleeping:

* time to first token: ``prefill_s_per_1k_tokens * prompt_tokens / 1000 + ttft_base_s``;
* then each output token: ``itl_s * (1 + running / itl_knee)``, ``running`` being the
  requests decoding on that endpoint now (a bigger batch is slower per token);
* at most ``max_running`` requests hold a slot per endpoint, the rest queue FIFO;
* every duration is divided by ``time_scale``.

The output is always a valid ``click`` tool call (what ``format_action`` writes) and
``<|im_end|>``, after filler words when the drawn length (lognormal) is longer. A
request resumed after a pause (its partial output appended to the prompt, as the
gateway's InferenceClient does) continues the same completion, so the joined
output still parses as one tool call.

``GET /sim_stats`` on each endpoint gives its counters for the bench to sum.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import io
import json
import logging
import os
import pathlib
import random
import signal
import sys
import time
import warnings

import numpy as np
from aiohttp import web
from PIL import Image

from asyncwebrl.common.agent.actions import format_action
from asyncwebrl.common.agent.vision import FORMATS, MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, ImageBatch, image_tokens, \
    load_processors
from asyncwebrl.common.models.loading import model_family
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.engine.config import EngineConfig
from asyncwebrl.engine.core import ABORTED_RUNNING, ABORTED_WAITING, GenRequest
from asyncwebrl.engine.errors import BadRequest
from asyncwebrl.engine.service import Server
from asyncwebrl.v1 import env_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_common import output_tokens, per_token_s, ttft_s  # noqa: E402  (one owner of the fakes' distributions)

log = logging.getLogger("asyncwebrl.sim_sglang")
MIN_TICK_S = 0.005  # the scheduler never wakes more often than this: the fake's CPU stays small
FILLER = "Memory: the page shows a header, a list of links and a search box; the task needs one more click. "


class Completion:
    """The one answer every request gets: filler tokens, the tool call, then ``<|im_end|>``."""

    def __init__(self, tokenizer, longest: int) -> None:
        call = format_action(env_pb2.Action(click=env_pb2.Click(at=env_pb2.Point(x=500, y=300))))
        self.tool = tokenizer(call, add_special_tokens=False)["input_ids"]
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        unit = tokenizer(FILLER, add_special_tokens=False)["input_ids"]
        self.filler = (unit * (longest // len(unit) + 1))[:longest]
        assert self.tool[0] not in self.filler, "filler must not contain the tool call's first token"
        self.header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]

    def partial(self, ids: list[int]) -> list[int]:
        """What follows the last assistant header: the output so far of a resumed request."""
        h = self.header
        for i in range(len(ids) - len(h), -1, -1):
            if ids[i] == h[0] and ids[i:i + len(h)] == h:
                return ids[i + len(h):]
        return []

    def plan(self, prompt: list[int], length: int) -> list[int]:
        """The tokens still to write, for a drawn total ``length``; a resume goes on where it stopped."""
        done = self.partial(prompt)
        a = 0
        while a < len(done) and a < len(self.filler) and done[a] == self.filler[a]:
            a += 1
        rest = done[a:]
        if rest and len(rest) < len(self.tool) and rest == self.tool[:len(rest)]:
            return self.tool[len(rest):] + [self.eos]
        if rest:  # not one of ours: a fresh answer
            a = 0
        filler = max(a, min(len(self.filler), length - len(self.tool) - 1))
        return self.filler[a:filler] + self.tool + [self.eos]


class SimEngine:
    """The interface ``Server`` drives (``asyncwebrl.engine.core.Engine``), in simulated time on the event loop."""

    def __init__(self, args: argparse.Namespace, completion: Completion, tokenizer, max_positions: int,
                 seed: int) -> None:
        self.args = args
        self.completion = completion
        self.tokenizer = tokenizer
        self.weight_version = args.initial_version
        self.max_batch_size = args.max_running
        self.max_positions = max_positions
        self.device = "sim"
        self.rng = random.Random(seed)
        self._paused = False
        self.loading = False
        self.waiting: collections.deque[GenRequest] = collections.deque()
        self.rows: list[dict] = []  # admitted requests: {gen, plan, n, credit, decode_from}
        self.wake = asyncio.Event()
        self.last = time.monotonic()
        self.stats_ = {"requests": 0, "output_tokens": 0, "aborted": 0, "queue_wait_s": 0.0, "busy_s": 0.0}

    def _s(self, sim_seconds: float) -> float:
        return sim_seconds / self.args.time_scale

    # --- what Server calls -----------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def submit(self, gen: GenRequest) -> None:
        gen.created = time.monotonic()  # queue wait counts from here
        self.waiting.append(gen)
        self.wake.set()

    def command(self, fn) -> concurrent.futures.Future:
        """Run ``fn`` now (one event loop: nothing runs beside it); a coroutine it returns runs as a task."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - reported to the caller, as Engine.command does
            future.set_exception(exc)
            return future
        if not asyncio.iscoroutine(result):
            future.set_result(result)
            return future

        def done(task: asyncio.Task) -> None:
            if task.cancelled():
                future.cancel()
            elif task.exception() is not None:
                future.set_exception(task.exception())
            else:
                future.set_result(task.result())

        asyncio.ensure_future(result).add_done_callback(done)
        return future

    def stats(self) -> dict:
        return {"running": len(self.rows), "queued": len(self.waiting), "paused": self._paused}

    def pause(self, mode: str) -> dict:
        self._advance(time.monotonic())
        self._paused = True
        aborted = self._abort_matching(lambda g: True) if mode == "abort" else 0
        return {"paused": True, "aborted": aborted}

    def resume(self) -> dict:
        self._advance(time.monotonic())
        self._paused = False
        self.wake.set()
        return {"paused": False}

    def abort(self, rid: str | None) -> int:
        return self._abort_matching((lambda g: True) if rid is None else (lambda g: g.rid == rid))

    def _abort_matching(self, match) -> int:
        """As the embedded engine: running requests end with their output so far, waiting ones with none."""
        self._advance(time.monotonic())
        aborted = self._abort_rows(match, ABORTED_RUNNING)
        keep: collections.deque[GenRequest] = collections.deque()
        for gen in self.waiting:
            if match(gen):
                self._deliver(gen, dict(ABORTED_WAITING))
                aborted += 1
            else:
                keep.append(gen)
        self.waiting = keep
        return aborted

    async def update_weights(self, path: str, version: str, abort_all: bool) -> dict:
        if abort_all:
            self._abort_matching(lambda g: True)
        if not pathlib.Path(path).is_dir():  # the engine's load fails the same way: 400, success false
            raise FileNotFoundError(f"no checkpoint directory at {path}")
        self._advance(time.monotonic())
        self.loading = True  # as SGLang's scheduler: nothing decodes while weights load
        started = time.monotonic()
        try:
            await asyncio.sleep(self._s(self.args.load_s))
        finally:
            self.last = time.monotonic()  # the load's time produced no tokens
            self.loading = False
            self.wake.set()
        self.weight_version = version
        return {"bytes": 0, "seconds": time.monotonic() - started}

    # --- the scheduler ------------------------------------------------------------------------

    def _per_token(self, running: int) -> float:
        return self._s(per_token_s(vars(self.args), running))

    def _advance(self, now: float) -> None:
        """Give each decoding request the tokens it wrote since the last call."""
        start, self.last = self.last, now
        if self._paused or self.loading or now <= start:
            return
        decoding = [r for r in self.rows if r["decode_from"] < now]
        if not decoding:
            return
        self.stats_["busy_s"] += now - max(start, min(r["decode_from"] for r in decoding))
        per_token = self._per_token(len(decoding))
        for r in decoding:
            r["credit"] += (now - max(start, r["decode_from"])) / per_token
            k = min(int(r["credit"]), len(r["plan"]) - r["n"])
            if k <= 0:
                continue
            r["credit"] -= k
            gen = r["gen"]
            gen.output_ids += r["plan"][r["n"]:r["n"] + k]
            gen.logprobs += [-self.rng.expovariate(3.0) for _ in range(k)]
            gen.versions += [self.weight_version] * k
            r["n"] += k
        for r in [r for r in decoding if r["n"] == len(r["plan"])]:
            self.rows.remove(r)
            self._deliver(r["gen"], r["finish"])

    def _admit(self, now: float) -> None:
        while self.waiting and len(self.rows) < self.max_batch_size and not (self._paused or self.loading):
            gen = self.waiting.popleft()
            self.stats_["queue_wait_s"] += now - gen.created
            # Drawn without the request's budget, which then cuts it: finish length, as SGLang.
            drawn = output_tokens(self.rng, vars(self.args), self.args.max_new_tokens_limit)
            budget = gen.params.max_new_tokens
            plan = self.completion.plan(gen.input_ids, drawn)
            finish = {"type": "stop", "matched": self.completion.eos}
            if len(plan) > budget:  # the budget ends it first, as SGLang: finish length
                plan = plan[:budget]
                finish = {"type": "length", "length": budget}
            ttft = ttft_s(vars(self.args), len(gen.input_ids))
            self.rows.append({"gen": gen, "plan": plan, "n": 0, "credit": 0.0, "finish": finish,
                              "decode_from": now + self._s(ttft)})

    def _next_event(self, now: float) -> float | None:
        """When the next request starts decoding or finishes: the set of running requests changes."""
        if self._paused or self.loading or not self.rows:
            return None
        decoding = sum(r["decode_from"] < now for r in self.rows)
        per_token = self._per_token(decoding)
        return min(r["decode_from"] if r["decode_from"] >= now
                   else now + (len(r["plan"]) - r["n"] - r["credit"]) * per_token for r in self.rows)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            self._advance(now)
            self._admit(now)
            at = self._next_event(now)
            self.wake.clear()
            try:
                timeout = None if at is None else max(MIN_TICK_S, at - time.monotonic())
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _abort_rows(self, match, finish: dict) -> int:
        hit = [r for r in self.rows if match(r["gen"])]
        for r in hit:
            self.rows.remove(r)
            self._deliver(r["gen"], dict(finish))
        return len(hit)

    def _deliver(self, gen: GenRequest, finish: dict) -> None:
        gen.finish = finish
        gen.text = self.tokenizer.decode(gen.output_ids, skip_special_tokens=gen.params.skip_special_tokens)
        self.stats_["requests"] += 1
        self.stats_["output_tokens"] += len(gen.output_ids)
        self.stats_["aborted"] += finish["type"] == "abort"
        gen.on_done(gen)

    def shutdown(self) -> None:
        self._advance(time.monotonic())
        self._abort_rows(lambda g: True, {"type": "abort", "message": "engine shutting down"})
        while self.waiting:
            self._deliver(self.waiting.popleft(), {"type": "abort", "message": "engine shutting down"})


class SimPolicy:
    """The parts of ``asyncwebrl.common.models.loading.Policy`` the HTTP layer reads (no model)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.family = model_family(path)
        self.tokenizer, self.image_processor = load_processors(path)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")


class SimServer(Server):
    """The embedded engine's HTTP layer over a ``SimEngine``."""

    def __init__(self, config: EngineConfig, engine: SimEngine, policy: SimPolicy, vocab: int) -> None:
        super().__init__(config, engine, policy, vocab)  # type: ignore[arg-type]  (the interface, not the class)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._auth])
        for path, handler in (("/generate", self.generate), ("/update_weights_from_disk", self.update_weights),
                              ("/pause_generation", self.pause), ("/continue_generation", self.resume),
                              ("/abort_request", self.abort)):
            app.router.add_post(path, handler)
        for path, handler in (("/health", self.health), ("/health_generate", self.health_generate),
                              ("/ready", self.ready), ("/model_info", self.model_info),
                              ("/get_model_info", self.model_info), ("/sim_stats", self.sim_stats)):
            app.router.add_get(path, handler)
        app.on_cleanup.append(self._close)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path == "/sim_stats":  # the bench's counters: no key
            return await handler(request)
        return await Server._auth(self, request, handler)

    def _prepare_images(self, raw_images: list[bytes]) -> ImageBatch:
        """Token counts from each image's header (size) only, with decode_image's bounds: the
        pixels are never used, and decoding them would spend the CPU the simulator measures."""
        counts = []
        for i, data in enumerate(raw_images):
            if not data or len(data) > MAX_IMAGE_BYTES:
                raise BadRequest(f"image_data[{i}]", f"empty or over {MAX_IMAGE_BYTES} bytes")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    image = Image.open(io.BytesIO(data))
                    fmt, (w, h) = image.format, image.size
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on bad input
                raise BadRequest(f"image_data[{i}]", f"image does not decode: {type(exc).__name__}") from exc
            if fmt not in FORMATS or not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
                raise BadRequest(f"image_data[{i}]", f"image {fmt} {w}x{h}: not one of {FORMATS} or outside "
                                                     f"1-{MAX_IMAGE_SIDE} per side")
            counts.append(image_tokens(self.policy.image_processor, h, w))
        return ImageBatch(np.zeros((0, 0), np.float32), np.zeros((0, 3), np.int64), counts)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text="unhealthy") if self.stopping else web.Response(text="ok")

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "model_path": self.model_path, "tokenizer_path": str(self.policy.path), "is_generation": True,
            "model_type": self.policy.family, "weight_version": self.engine.weight_version,
            "max_batch_size": self.engine.max_batch_size, "device": "sim", "dtype": "bfloat16",
            **self.engine.stats(),
        })

    async def sim_stats(self, request: web.Request) -> web.Response:
        e = self.engine
        e._advance(time.monotonic())
        return web.json_response({**e.stats_, **e.stats(), "version": e.weight_version})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--count", type=int, default=1, help="Endpoints, each on a free loopback port.")
    p.add_argument("--ports", default="", help="Comma-separated ports instead of --count free ones.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-file", default="", help='Written once all listen: [{"id": "sim-<i>", "url": ...}].')
    p.add_argument("--model-path", default=str(SHIPPED / "qwen2_5_vl"), help="Tokenizer and image processor.")
    p.add_argument("--model-roots", default="/", help="Where update_weights_from_disk may load from (comma list).")
    p.add_argument("--api-key", default="", help="Bearer key for every route but /health and /sim_stats.")
    p.add_argument("--admin-api-key", default="", help="Key of the weight and pause routes (default: --api-key).")
    p.add_argument("--initial-version", default="0", help="weight_version served at start.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-scale", type=float, default=1.0, help="Simulated seconds per real second.")
    p.add_argument("--ttft-base-s", type=float, default=0.05)
    p.add_argument("--prefill-s-per-1k-tokens", type=float, default=0.03)
    p.add_argument("--itl-s", type=float, default=0.015, help="Seconds per output token of a lone request.")
    p.add_argument("--itl-knee", type=float, default=64.0, help="Running requests that double the per-token time.")
    p.add_argument("--max-running", type=int, default=128, help="Requests decoding at once per endpoint.")
    p.add_argument("--output-tokens-median", type=float, default=120.0)
    p.add_argument("--output-tokens-p90", type=float, default=300.0)
    p.add_argument("--load-s", type=float, default=20.0, help="Seconds update_weights_from_disk takes.")
    p.add_argument("--max-new-tokens-limit", type=int, default=4096)
    p.add_argument("--max-body-mb", type=int, default=64)
    args = p.parse_args(argv)
    for name in ("time_scale", "itl_knee", "output_tokens_median", "output_tokens_p90"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("ttft_base_s", "prefill_s_per_1k_tokens", "itl_s", "load_s"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if args.max_running < 1 or args.count < 1:
        p.error("--max-running and --count must be at least 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    policy = SimPolicy(pathlib.Path(args.model_path))
    text = json.loads((policy.path / "config.json").read_text())
    text = text.get("text_config", text)
    config = EngineConfig(api_key=args.api_key, admin_api_key=args.admin_api_key, model_path=str(policy.path),
                          model_roots=tuple(r for r in args.model_roots.split(",") if r),
                          max_new_tokens_limit=args.max_new_tokens_limit, max_body_bytes=args.max_body_mb << 20)
    completion = Completion(policy.tokenizer, args.max_new_tokens_limit)
    ports = [int(p) for p in args.ports.split(",") if p] or [0] * args.count
    servers, runners, tasks, endpoints = [], [], [], []
    for i, port in enumerate(ports):
        engine = SimEngine(args, completion, policy.tokenizer, int(text.get("max_position_embeddings", 1 << 30)),
                           args.seed + i)
        server = SimServer(config, engine, policy, int(text.get("vocab_size", len(policy.tokenizer))))
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, port).start()
        servers.append(server)
        runners.append(runner)
        tasks.append(asyncio.create_task(engine.run()))
        endpoints.append({"id": f"sim-{i}", "url": f"http://{args.host}:{runner.addresses[0][1]}"})
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        pathlib.Path(tmp).write_text(json.dumps(endpoints))
        os.replace(tmp, args.port_file)  # the bench never reads half a file
    log.info("fake SGLang endpoints listening: %s", ", ".join(e["url"] for e in endpoints))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.stopping = True
        server.engine.shutdown()  # in-flight requests answer abort, so the sites close at once
    for task in tasks:
        task.cancel()
    for runner in runners:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sim_sglang %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
