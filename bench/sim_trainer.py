"""A FAKE trainer for `make bench-scale`: the real trainer's loop around a learner that only takes time.

The trainer's I/O is the real one (``asyncwebrl.trainer.service.Trainer``): GetBatch with its own
pending entries first, the batch's screenshots through GetBlobs, the version directory and its
manifest, Publish through weightsync, Ack with the new version. Only the learning is replaced: a step
sleeps ``--sim-train-s`` (divided by ``--sim-time-scale``), as a GPU step of that length would leave
the CPU to the other services, and the version it writes is a small stand-in checkpoint (weightsync
hashes and fans it out; the fake engines take their stated load time).

    python bench/sim_trainer.py --sim-train-s 20 --sim-time-scale 4 <python -m asyncwebrl.trainer flags>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np
from safetensors.numpy import save_file

from asyncwebrl.common import weights
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.grpcserver import ServiceRunner
from asyncwebrl.common.main import service_main
from asyncwebrl.trainer import metrics
from asyncwebrl.trainer.config import TrainerConfig
from asyncwebrl.trainer.service import Batch, Trainer
from asyncwebrl.v1 import buffer_pb2

CHECKPOINT_FLOATS = 1 << 16  # 256 KB: what weightsync hashes per version here; the load time is the fake engine's


class SimLearner:
    """What Trainer asks of a learner: its version and step, and nothing to restore (a fresh run)."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.root = pathlib.Path(config.checkpoint_dir)
        self.version = 0
        self.step = 0
        self.resumed_from = ""

    def restore(self):
        return None

    def write_version(self, version: int, batch_id: str) -> weights.Manifest:
        self.root.mkdir(parents=True, exist_ok=True)
        final = weights.version_dir(self.root, version)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps({"model_type": "sim", "version": version}))
        save_file({"w": np.full(CHECKPOINT_FLOATS, version, dtype=np.float32)}, str(tmp / "model.safetensors"))
        manifest = weights.write_manifest(tmp, version, step=self.step, batch_id=batch_id)
        weights.commit_dir(tmp, final)
        weights.prune(self.root, self.config.keep_versions)
        return manifest


class SimTrainer(Trainer):
    def __init__(self, *args, train_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_s = train_s

    def _train(self, batch: Batch) -> dict:
        groups = [buffer_pb2.Group.FromString(g) for g in batch.groups]
        started = time.monotonic()
        time.sleep(self.train_s)
        trained = time.monotonic() - started
        self.learner.step += 1
        self.learner.write_version(batch.version, ",".join(batch.batch_ids))
        self.learner.version = batch.version
        entry = metrics.batch_metrics(groups, batch.version - 1)
        entry |= {
            "step": self.learner.step, "version": batch.version, "rows": 0,
            "zero_variance_dropped": batch.rejected.get("zero_variance", 0), "rejected": dict(batch.rejected),
            "loss": 0.0, "grad_norm": 0.0, "clip_fraction": 0.0, "cap_fraction": 0.0, "approx_kl": 0.0,
            "lr": self.config.lr, "micro_batches": 0, "train_tokens": 0, "train_tokens_per_s": 0.0,
            "seconds": {"wait": batch.wait_s, "proximal": 0.0, "forward_backward": trained, "optimizer": 0.0,
                        "checkpoint": time.monotonic() - started - trained, "publish": 0.0},
        }
        return {"entry": entry}


async def serve(config: TrainerConfig, train_s: float) -> None:
    runner = ServiceRunner(config, [], ready=lambda: True)
    runner.build_server()
    runner.install_signal_handlers()
    await runner.start()
    channel = aio_channel(config.buffer_target, config.auth_token, config.max_message_bytes)
    sync = aio_channel(config.weightsync_target, config.auth_token) if config.publish == "weightsync" else None
    try:
        trainer = SimTrainer(config, SimLearner(config), channel, sync, train_s=train_s)
        await trainer.start()
        work = asyncio.create_task(trainer.run())
        stopped = asyncio.create_task(runner.wait_stopped())
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        trainer.stop()
        await work
        stopped.cancel()
    finally:
        await runner.stop()
        await channel.close()
        if sync is not None:
            await sync.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     add_help=False)
    parser.add_argument("--sim-train-s", type=float, required=True, help="seconds of one training step on the GPUs")
    parser.add_argument("--sim-time-scale", type=float, default=1.0, help="every stated time is divided by this")
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        parser.print_help()
        print("\nEvery other flag is the trainer's (python -m asyncwebrl.trainer --help).")
        return 0
    sim, rest = parser.parse_known_args(args)
    if not (sim.sim_train_s >= 0 and sim.sim_time_scale > 0):
        parser.error("--sim-train-s must be >= 0 and --sim-time-scale > 0")
    service_main("trainer", TrainerConfig, lambda c: serve(c, sim.sim_train_s / sim.sim_time_scale), rest,
                 errors=(OSError, ValueError))
    return 0


if __name__ == "__main__":
    sys.exit(main())
