"""One training step on a fixed batch, then version 1 written; run alone or under torchrun.
Prints (rank 0) the step's figures and where the version went, as JSON."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
from PIL import Image

from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.trainer.batching import Images, Row
from asyncwebrl.trainer.config import TrainerConfig
from asyncwebrl.trainer.dist import init_from_env
from asyncwebrl.trainer.learner import Learner
from asyncwebrl.v1 import env_pb2


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(60, 80, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def main(checkpoints: str) -> None:
    d = init_from_env("cpu")
    learner = Learner(TrainerConfig(model_path=str(SHIPPED / "qwen2_5_vl"), checkpoint_dir=checkpoints, device="cpu",
                                    lr=1e-3, token_budget=96, minibatches=2), d)
    policy = learner.policy
    blobs = {f"{i:064x}": png(i) for i in range(3)}

    images = Images(policy.image_processor, blobs)
    rng = np.random.RandomState(0)
    rows = []
    for i in range(7):  # odd: the ranks get different numbers of rows and micro-batches
        ref = env_pb2.ScreenshotRef(sha256=f"{i % 3:064x}")
        n = int(images([ref])[1].prod()) // 4
        prompt = [20 + i, policy.vision_start_id] + [policy.image_token_id] * n + [policy.vision_end_id, 30]
        out = [int(t) for t in rng.randint(40, 900, size=2 + i % 4)]
        behav = [float(x) for x in -rng.uniform(5.0, 9.0, size=len(out))]
        rows.append(Row(prompt, out, behav, [0] * len(out), float(rng.randn()), [ref], f"g{i}", f"e{i}", False))
    metrics = learner.train(rows, images)
    manifest = learner.write_version(1)
    if d.main:
        print(json.dumps({"world": d.world, "loss": metrics.loss, "grad_norm": metrics.grad_norm,
                          "clip_fraction": metrics.clip_fraction, "cap_fraction": metrics.cap_fraction,
                          "micro_batches": metrics.micro_batches, "checksum": manifest.checksum}))
    d.close()


if __name__ == "__main__":
    main(sys.argv[1])
