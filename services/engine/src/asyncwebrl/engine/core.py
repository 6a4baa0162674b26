"""The generation loop: continuous batching over one KV cache, on one thread.

Every iteration the loop (1) admits waiting requests, prefilling them together
(left-padded, with their images) and sampling their first token, then merges
their cache rows into the running batch; (2) decodes one token for every
running request in one forward pass; (3) retires finished requests and drops
their cache rows. A request joins as soon as a slot is free and leaves as soon
as it finishes; nobody waits for a whole batch.

Commands (pause, continue, abort, weight updates) run on the same thread
between iterations, so the model never changes under a forward pass, and each
output token records the weight version that produced it.

Logprobs are ``log_softmax(logits / temperature)`` of the sampled token
(temperature 1 for greedy), before top-k/top-p truncation: what
``asyncwebrl.common.models.logprobs.output_logprobs`` computes for the trainer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from asyncwebrl.common.models.broadcast import dtype_name, model_names
from asyncwebrl.common.models.loading import Policy, load_weights
from asyncwebrl.common.models.logprobs import mrope_positions
from asyncwebrl.engine import metrics

# How SGLang 0.5.23 reports an aborted request: one that was running gets FINISH_ABORT().to_json()
# (schedule_batch.py), with what it generated so far; one still in the waiting queue gets the tokenizer
# manager's own reason (tokenizer_manager.py, handle_abort_req) and no output.
ABORTED_RUNNING = {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
ABORTED_WAITING = {"type": "abort", "message": "Abort in waiting queue"}

log = logging.getLogger("asyncwebrl.engine")


@dataclasses.dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    sampling_seed: int | None = None


@dataclasses.dataclass(eq=False)
class GenRequest:
    rid: str
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool
    on_done: Callable[[GenRequest], None]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    output_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    versions: list[str] = dataclasses.field(default_factory=list)
    finish: dict | None = None
    text: str | None = None
    created: float = dataclasses.field(default_factory=time.monotonic)
    first_token_at: float | None = None
    generator: torch.Generator | None = None


class Engine:
    def __init__(self, policy: Policy, weight_version: str, max_batch_size: int, seed: int = 0) -> None:
        self.policy = policy
        self.model = policy.model
        self.weight_version = weight_version
        self.max_batch_size = max_batch_size
        self.device = policy.device
        self.max_positions = int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 1 << 30))
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self._lock = threading.Condition()
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._commands: collections.deque[tuple[Callable[[], object], concurrent.futures.Future]] = collections.deque()
        self._paused = False
        self._stopping = False
        # The running batch: one row per request, in order.
        self._rows: list[GenRequest] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None     # (rows, T) 1 where a cache column is a real token
        self._deltas: torch.Tensor | None = None   # (rows, 1) mrope offset of text positions
        self._last: torch.Tensor | None = None     # (rows,) the token each row feeds next
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    # --- called from other threads ---------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=30)

    def submit(self, request: GenRequest) -> None:
        with self._lock:
            self._waiting.append(request)
            metrics.QUEUED.set(len(self._waiting))
            self._lock.notify_all()

    def command(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run ``fn`` on the engine thread between iterations."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._commands.append((fn, future))
            self._lock.notify_all()
        return future

    @property
    def paused(self) -> bool:
        return self._paused

    def stats(self) -> dict:
        with self._lock:
            return {"running": len(self._rows), "queued": len(self._waiting), "paused": self._paused}

    # --- commands (engine thread) ------------------------------------------

    def pause(self, mode: str) -> dict:
        """SGLang's pause: ``abort`` ends every request, running or waiting (tokenizer_manager's
        pause_generation sends abort_all); ``in_place`` keeps them, with their caches, for continue."""
        self._paused = True
        aborted = self._abort_matching(lambda r: True) if mode == "abort" else 0
        return {"paused": True, "aborted": aborted}

    def resume(self) -> dict:
        self._paused = False
        return {"paused": False}

    def abort(self, rid: str | None) -> int:
        """Abort one request (or all with None), running or waiting."""
        return self._abort_matching((lambda r: True) if rid is None else (lambda r: r.rid == rid))

    def _abort_matching(self, match: Callable[[GenRequest], bool]) -> int:
        aborted = self._abort_rows(match, ABORTED_RUNNING)
        with self._lock:
            keep = collections.deque()
            for r in self._waiting:
                if match(r):
                    r.finish = dict(ABORTED_WAITING)
                    self._deliver(r)
                    aborted += 1
                else:
                    keep.append(r)
            self._waiting = keep
            metrics.QUEUED.set(len(self._waiting))
        return aborted

    def update_weights(self, path: str, version: str, abort_all: bool) -> dict:
        if abort_all:  # SGLang's abort_all_requests: running and waiting alike
            self._abort_matching(lambda r: True)
        started = time.monotonic()
        nbytes = load_weights(self.model, path)
        self.weight_version = version
        metrics.WEIGHT_UPDATES.inc()
        metrics.WEIGHT_LOAD_SECONDS.observe(time.monotonic() - started)
        log.info("weights updated", extra={"path": path, "weight_version": version, "bytes": nbytes})
        return {"bytes": nbytes, "seconds": time.monotonic() - started}

    def check_weights(self, named: list[tuple[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pair each received tensor with the model tensor it replaces, checking every name, shape and
        dtype first (any thread: nothing is changed). ValueError names the first bad one."""
        own = self.model.state_dict()
        renamed = model_names(self.model, [n for n, _ in named])
        pairs, seen = [], set()
        for name, tensor in named:
            target = renamed[name]
            if target not in own:
                raise ValueError(f"{name} is not a weight of this {self.model.config.model_type} model")
            if target in seen:
                raise ValueError(f"{name} is given twice")
            seen.add(target)
            live = own[target]
            if tuple(tensor.shape) != tuple(live.shape):
                raise ValueError(f"{name} has shape {list(tensor.shape)}, the model {list(live.shape)}")
            if tensor.is_floating_point() != live.is_floating_point():
                raise ValueError(f"{name} is {dtype_name(tensor.dtype)}, the model {dtype_name(live.dtype)}")
            pairs.append((live, tensor))
        return pairs

    def apply_weights(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], version: str, abort_all: bool) -> dict:
        """Copy checked, fully received tensors into the model and take their version (engine thread,
        between iterations: no forward pass sees a mix)."""
        if abort_all:
            self._abort_matching(lambda r: True)
        started = time.monotonic()
        with torch.no_grad():
            for live, tensor in pairs:
                live.copy_(tensor)
        self.weight_version = version
        metrics.WEIGHT_LOAD_SECONDS.observe(time.monotonic() - started)
        nbytes = sum(t.numel() * t.element_size() for _, t in pairs)
        log.info("weights updated from a broadcast", extra={"weight_version": version, "tensors": len(pairs),
                                                            "bytes": nbytes})
        return {"bytes": nbytes, "seconds": time.monotonic() - started}

    # --- the loop ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while (
                    not self._stopping
                    and not self._commands
                    and (self._paused or (not self._rows and not self._waiting))
                ):
                    self._lock.wait(0.5)
                if self._stopping:
                    break
                commands = list(self._commands)
                self._commands.clear()
            for fn, future in commands:
                try:
                    future.set_result(fn())
                except Exception as exc:  # noqa: BLE001 - reported to the caller
                    future.set_exception(exc)
            if self._paused:
                continue
            try:
                with torch.inference_mode():
                    self._admit()
                    if self._rows:
                        self._decode()
            except Exception:  # noqa: BLE001 - one bad batch must not end the engine
                log.exception("generation step failed; aborting the running batch")
                self._abort_rows(lambda r: True, {"type": "abort", "message": "engine error"})
            metrics.RUNNING.set(len(self._rows))
        self._abort_rows(lambda r: True, {"type": "abort", "message": "engine shutting down"})
        with self._lock:
            for r in self._waiting:
                r.finish = {"type": "abort", "message": "engine shutting down"}
                self._deliver(r)
            self._waiting.clear()

    def _admit(self) -> None:
        with self._lock:
            free = self.max_batch_size - len(self._rows)
            new = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            metrics.QUEUED.set(len(self._waiting))
        if not new:
            return
        width = max(len(r.input_ids) for r in new)
        pad = self.policy.tokenizer.pad_token_id or 0
        ids = torch.full((len(new), width), pad, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, r in enumerate(new):
            ids[i, width - len(r.input_ids):] = torch.tensor(r.input_ids)
            mask[i, width - len(r.input_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with_images = [r for r in new if r.image_grid_thw is not None]
        pixel_values = grid = None
        if with_images:
            dtype = next(self.model.parameters()).dtype
            pixel_values = torch.cat([r.pixel_values for r in with_images]).to(self.device, dtype)
            grid = torch.cat([r.image_grid_thw for r in with_images]).to(self.device)
        mm = (ids == self.policy.image_token_id).long()
        positions, deltas = mrope_positions(self.model, ids, mask, grid, mm)
        cache = DynamicCache()
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=pixel_values,
            image_grid_thw=grid, mm_token_type_ids=mm, past_key_values=cache, use_cache=True,
        )
        metrics.PROMPT_TOKENS.inc(int(mask.sum()))
        metrics.PREFILL_BATCH.observe(len(new))
        tokens = self._sample(new, out.logits[:, -1])
        self._merge(new, cache, mask, deltas.to(self.device).view(-1, 1), tokens)

    def _decode(self) -> None:
        rows = len(self._rows)
        self._mask = torch.cat([self._mask, torch.ones((rows, 1), dtype=self._mask.dtype, device=self.device)], 1)
        position = (self._mask.sum(-1, keepdim=True) - 1 + self._deltas).view(1, rows, 1).expand(3, rows, 1)
        out = self.model(
            input_ids=self._last[:, None], attention_mask=self._mask, position_ids=position,
            past_key_values=self._cache, use_cache=True,
        )
        metrics.DECODE_BATCH.observe(rows)
        self._last = self._sample(self._rows, out.logits[:, -1])
        self._retire()

    # --- sampling and bookkeeping ------------------------------------------

    def _sample(self, rows: list[GenRequest], logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        temps = torch.tensor([r.params.temperature for r in rows], device=logits.device)
        greedy = temps <= 0
        scaled = logits / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
        logprobs = torch.log_softmax(scaled, dim=-1)
        tokens = scaled.argmax(-1)
        # Plain temperature sampling for all such rows in one draw; rows with
        # top-k/top-p or their own seed go one by one below.
        plain = [i for i, r in enumerate(rows) if not greedy[i] and r.generator is None
                 and r.params.top_k <= 0 and r.params.top_p >= 1.0]
        if plain:
            index = torch.tensor(plain, device=logits.device)
            probs = torch.softmax(scaled.index_select(0, index), -1).cpu()
            tokens[index] = torch.multinomial(probs, 1, generator=self._generator)[:, 0].to(tokens.device)
        done = set(plain)
        for i, r in enumerate(rows):
            if greedy[i] or i in done:
                continue
            row = scaled[i]
            if 0 < r.params.top_k < row.numel():
                kth = torch.topk(row, r.params.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            if r.params.top_p < 1.0:
                sorted_logits, order = torch.sort(row, descending=True)
                cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
                drop = cumulative - torch.softmax(sorted_logits, -1) > r.params.top_p
                row = row.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
            probs = torch.softmax(row, -1).cpu()
            tokens[i] = int(torch.multinomial(probs, 1, generator=r.generator or self._generator))
        picked = logprobs.gather(-1, tokens[:, None])[:, 0].tolist()
        now = time.monotonic()
        for r, token, lp in zip(rows, tokens.tolist(), picked):
            if r.first_token_at is None:
                r.first_token_at = now
                metrics.TTFT.observe(now - r.created)
            r.output_ids.append(token)
            r.logprobs.append(lp)
            r.versions.append(self.weight_version)
            self._check_finished(r, token)
        metrics.GENERATED_TOKENS.inc(len(rows))
        return tokens

    def _check_finished(self, r: GenRequest, token: int) -> None:
        p = r.params
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.policy.eos_ids):
            r.finish = {"type": "stop", "matched": token}
            return
        if p.stop:
            text = self._text(r)
            for s in p.stop:
                at = text.find(s)
                if at >= 0:
                    r.finish = {"type": "stop", "matched": s}
                    r.text = text[:at]
                    return
        if len(r.output_ids) >= p.max_new_tokens or len(r.input_ids) + len(r.output_ids) >= self.max_positions:
            r.finish = {"type": "length", "length": len(r.output_ids)}

    def _text(self, r: GenRequest) -> str:
        return self.policy.tokenizer.decode(r.output_ids, skip_special_tokens=r.params.skip_special_tokens)

    def _merge(self, new: list[GenRequest], cache: DynamicCache, mask: torch.Tensor, deltas: torch.Tensor,
               tokens: torch.Tensor) -> None:
        if not self._rows:
            self._rows, self._cache, self._mask, self._deltas, self._last = list(new), cache, mask, deltas, tokens
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            for old_layer, new_layer in zip(self._cache.layers, cache.layers):
                old_layer.keys = torch.cat([_pad_left(old_layer.keys, width), _pad_left(new_layer.keys, width)])
                old_layer.values = torch.cat([_pad_left(old_layer.values, width), _pad_left(new_layer.values, width)])
            self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
            self._deltas = torch.cat([self._deltas, deltas])
            self._last = torch.cat([self._last, tokens])
            self._rows.extend(new)
        self._retire()

    def _retire(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if r.finish is None]
        if len(keep) == len(self._rows):
            return
        for r in self._rows:
            if r.finish is not None:
                self._deliver(r)
        if not keep:
            self._rows, self._cache, self._mask, self._deltas, self._last = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        self._mask = self._mask.index_select(0, index)
        # Columns that are padding for every remaining row can go.
        first = int((self._mask.sum(0) > 0).nonzero()[0])
        self._mask = self._mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._deltas = self._deltas.index_select(0, index)
        self._last = self._last.index_select(0, index)

    def _abort_rows(self, match: Callable[[GenRequest], bool], finish: dict) -> int:
        hit = [r for r in self._rows if r.finish is None and match(r)]
        for r in hit:
            r.finish = dict(finish)
        if hit:
            self._retire()
        return len(hit)

    def _deliver(self, r: GenRequest) -> None:
        if r.text is None:
            r.text = self._text(r)
        metrics.FINISHED.labels(r.finish["type"]).inc()
        metrics.E2E.observe(time.monotonic() - r.created)
        try:
            r.on_done(r)
        except Exception:  # noqa: BLE001 - a caller gone away must not stop the loop
            log.exception("delivering request %s failed", r.rid)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the sequence axis (-2 for cache tensors, -1 for masks) on the left with zeros."""
    axis = -1 if t.dim() == 2 else -2
    missing = width - t.shape[axis]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=axis)
