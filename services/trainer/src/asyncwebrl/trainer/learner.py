"""The model, its optimizer and schedule, and everything written to checkpoint storage.

Layout under ``checkpoint_dir``:

- ``v<N>/``: published version N, a complete Hugging Face checkpoint with a
  manifest (``asyncwebrl.common.weights``); the newest ``keep_versions`` stay.
- ``full/s<step>/``: a full checkpoint every ``full_every`` versions: weights,
  AdamW state, step, version and RNG, in one ``state.pt``; the newest
  ``keep_full`` stay.

Restart: the newest full checkpoint restores optimizer, step and RNG; if a
newer version was published after it, the weights roll forward to that
version (so the version never goes back and no acked batch is lost) while the
AdamW moments stay those of the full checkpoint, which is the only
approximation, bounded by ``full_every``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import re
import shutil
import time

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from asyncwebrl.common import weights
from asyncwebrl.common.models.loading import MODEL_CLASSES, load_policy
from asyncwebrl.trainer.algorithm import lr_at
from asyncwebrl.trainer.batching import Row
from asyncwebrl.trainer.config import TrainerConfig
from asyncwebrl.trainer.dist import Dist, shard
from asyncwebrl.trainer.step import ImageResolver, StepMetrics, train_step

log = logging.getLogger("asyncwebrl.trainer")
_FULL_DIR = re.compile(r"^s(\d{8,})$")
# Files of the starting checkpoint that are not weights: copied into every version
# so each one is a complete checkpoint an engine or SGLang can load on its own.
_WEIGHT_FILES = re.compile(r"(\.safetensors|\.safetensors\.index\.json|\.bin|\.pt)$")


class Learner:
    def __init__(self, config: TrainerConfig, d: Dist) -> None:
        self.config = config
        self.d = d
        torch.manual_seed(config.seed)
        self.policy = load_policy(config.model_path, device=str(d.device), dtype=config.dtype)
        self.model = self.policy.model
        self.ref_model = None
        if config.kl_coef > 0:
            self.ref_model = load_policy(config.model_path, device=str(d.device), dtype=config.dtype).model
            self.ref_model.requires_grad_(False)
        if d.distributed:
            compute = {"float32": None, "bfloat16": torch.bfloat16}.get(
                config.compute_dtype, torch.bfloat16 if d.device.type == "cuda" else None)
            shard(self.model, d, compute)
            if self.ref_model is not None:
                shard(self.ref_model, d, compute)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                           weight_decay=config.weight_decay)
        self.root = pathlib.Path(config.checkpoint_dir)
        self.step = 0
        self.version = 0
        self.resumed_from = ""

    @property
    def lr(self) -> float:
        c = self.config
        return lr_at(self.step, c.lr, c.warmup_steps, c.total_steps, c.lr_schedule, c.min_lr_ratio)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    def train(self, rows: list[Row], images: ImageResolver, version: int | None = None) -> StepMetrics:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        metrics = train_step(self.model, self.optimizer, rows, images, self.config.step_config(self.step), self.d,
                             self.ref_model, version)
        self.step += 1
        return metrics

    # --- published versions -------------------------------------------------

    def _full_options(self, **kw) -> StateDictOptions:
        return StateDictOptions(full_state_dict=True, cpu_offload=self.d.distributed, **kw)

    def write_version(self, version: int, batch_id: str = "") -> weights.Manifest | None:
        """Every rank gathers; rank 0 writes ``v<version>/`` and returns its manifest."""
        state = get_model_state_dict(self.model, options=self._full_options())
        if not self.d.main:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        final = weights.version_dir(self.root, version)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        for f in pathlib.Path(self.config.model_path).iterdir():
            if f.is_file() and not _WEIGHT_FILES.search(f.name) and not (tmp / f.name).exists() \
                    and f.name != weights.MANIFEST:
                shutil.copy2(f, tmp / f.name)
        manifest = weights.write_manifest(tmp, version, step=self.step, batch_id=batch_id)
        weights.commit_dir(tmp, final)
        weights.prune(self.root, self.config.keep_versions)
        return manifest

    # --- full checkpoints -----------------------------------------------------

    def _full_dirs(self) -> list[tuple[int, pathlib.Path]]:
        base = self.root / "full"
        if not base.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in base.iterdir()
                 if (m := _FULL_DIR.match(p.name)) and (p / "meta.json").is_file() and (p / "state.pt").is_file()]
        return sorted(found)

    def save_full(self) -> pathlib.Path | None:
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self._full_options())
        if not self.d.main:
            return None
        base = self.root / "full"
        base.mkdir(parents=True, exist_ok=True)
        final = base / f"s{self.step:08d}"
        tmp = base / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        py_version, py_state, py_gauss = random.getstate()
        np_state = np.random.get_state()
        torch.save({
            "model": model_state,
            "optimizer": optim_state,
            "step": self.step,
            "version": self.version,
            "rng": {
                # Plain lists and tensors, so the file loads with weights_only=True.
                "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": self.step, "version": self.version,
                                                   "created_unix": time.time()}))
        weights.commit_dir(tmp, final)
        for _, old in self._full_dirs()[: -self.config.keep_full]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _restore_full(self, path: pathlib.Path) -> None:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True) if self.d.main else None
        meta = self.d.broadcast({"step": state["step"], "version": state["version"]} if state else None)
        set_state_dict(
            self.model, self.optimizer,
            model_state_dict=state["model"] if state else {},
            optim_state_dict=state["optimizer"] if state else {},
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.d.distributed),
        )
        if state:
            rng = state["rng"]
            py = rng["python"]
            random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
            np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.step, self.version = int(meta["step"]), int(meta["version"])

    def _roll_forward(self, path: pathlib.Path) -> None:
        """Weights of a published version (read by transformers, so its key naming is the one saved)."""
        state = {}
        if self.d.main:
            family = self.model.config.model_type
            fresh = MODEL_CLASSES[family].from_pretrained(path, local_files_only=True,
                                                         dtype=next(self.model.parameters()).dtype)
            state = fresh.state_dict()
        set_model_state_dict(self.model, state, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=self.d.distributed))

    def restore(self) -> weights.Manifest | None:
        """Resume from checkpoint storage; returns the manifest of the newest version, if any."""
        fulls = self._full_dirs()
        if fulls:
            self._restore_full(fulls[-1][1])
            self.resumed_from = str(fulls[-1][1])
        latest = weights.latest_version(self.root) if self.d.main else None
        found = self.d.broadcast((latest[0], str(latest[1])) if latest else None)
        if found is None:
            return None
        manifest, path = found
        if manifest.version > self.version:
            self._roll_forward(pathlib.Path(path))
            self.version, self.step = manifest.version, max(self.step, manifest.step)
            self.resumed_from = str(path) if not fulls else f"{self.resumed_from} + weights of {path}"
        return manifest
