"""`make bench-trainer`: training tokens/s of the trainer's step on the CPU, one process
and two FSDP2 processes (gloo), in one run.

The tiny shipped Qwen2.5-VL. The batch is what the gateway writes: GRPO groups
of agent steps, each a full prompt (system prompt with the action grammar,
instruction, history, one 1280x720 JPEG screenshot) and an output of reasoning
plus one tool call, with behaviour logprobs a little off-policy. A step is the
whole training step: proximal logprobs, forward and backward, AdamW.

"tokens" are prompt + output tokens through the model, counted once per pass
(the proximal pass and each PPO epoch), so tokens/s compares with the usual
training-throughput figure. Modes alternate over rounds; the median step counts.
Prints one JSON object on its last line and writes bench/results/trainer.json
and trainer.png.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = pathlib.Path(os.environ.get("ASYNCWEBRL_BENCH_RESULTS", ROOT / "bench" / "results"))


def worker(args) -> None:
    from asyncwebrl.common.agent.prompt import HistoryStep, prompt_ids, render
    from asyncwebrl.common.agent.vision import image_tokens
    from asyncwebrl.common.models.tiny import SHIPPED
    from asyncwebrl.trainer.batching import Row
    from asyncwebrl.trainer.config import TrainerConfig
    from asyncwebrl.trainer.dist import init_from_env
    from asyncwebrl.trainer.learner import Learner
    from asyncwebrl.trainer.batching import Images
    from asyncwebrl.v1 import env_pb2

    d = init_from_env("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        learner = Learner(TrainerConfig(model_path=str(SHIPPED / args.family), checkpoint_dir=tmp, device="cpu",
                                        lr=1e-5, token_budget=args.token_budget), d)
        policy = learner.policy
        rng = np.random.RandomState(0)
        blobs = {}
        for i in range(args.images):
            buf = io.BytesIO()
            Image.fromarray((rng.rand(720, 1280, 3) * 255).astype("uint8")).save(buf, "JPEG", quality=80)
            blobs[f"{i:064x}"] = buf.getvalue()
        images = Images(policy.image_processor, blobs)

        n_img = image_tokens(policy.image_processor, 720, 1280)
        history = [HistoryStep("Shop", '{"action": "click", "coordinate": [412, 230]}', True)] * 2
        rows = []
        for i in range(args.rows):
            text = render("Find the cheapest red kettle and add it to the cart.", history[: i % 3], 1)
            prompt = prompt_ids(policy.tokenizer, text, policy.image_token_id, [n_img])
            out = [int(t) for t in rng.randint(40, 900, size=args.output_tokens)]
            behav = [float(x) for x in -rng.uniform(5.0, 8.0, size=len(out))]
            ref = env_pb2.ScreenshotRef(sha256=f"{i % args.images:064x}")
            rows.append(Row(prompt, out, behav, [0] * len(out), float(rng.randn()) / 10, [ref], f"g{i // 8}",
                            f"e{i}", False))
        tokens = sum(r.tokens for r in rows) * 2  # the proximal pass and one PPO epoch
        learner.train(rows, images)  # warm-up: allocator, caches
        steps = []
        for _ in range(args.steps):
            d.barrier()
            t = time.monotonic()
            m = learner.train(rows, images)
            steps.append({"seconds": time.monotonic() - t, "proximal": m.seconds_proximal,
                          "forward_backward": m.seconds_forward_backward, "optimizer": m.seconds_optimizer,
                          "micro_batches": m.micro_batches})
        t = time.monotonic()
        learner.write_version(1)
        write_s = time.monotonic() - t
    if d.main:
        secs = statistics.median(s["seconds"] for s in steps)
        print(json.dumps({
            "world": d.world, "rows": len(rows), "tokens_per_step": tokens, "step_s": secs,
            "tokens_per_s": tokens / secs, "prompt_tokens_mean": statistics.fmean(len(r.prompt_ids) for r in rows),
            "split_s": {k: statistics.median(s[k] for s in steps) for k in ("proximal", "forward_backward", "optimizer")},
            "micro_batches": steps[0]["micro_batches"], "write_version_s": write_s,
            "parameters": sum(p.numel() for p in policy.model.parameters()),
        }))
    d.close()


def run_mode(args, world: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--family", args.family, "--rows", str(args.rows),
           "--output-tokens", str(args.output_tokens), "--steps", str(args.steps), "--images", str(args.images),
           "--token-budget", str(args.token_budget)]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["modes"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(modes, [results["modes"][m]["tokens_per_s"] for m in modes], color=["#1f77b4", "#ff7f0e"][: len(modes)])
    ax1.set_ylabel("train tokens/s")
    ax1.set_title(f"trainer step, {results['workload']['model']}, CPU ({results['machine']['cpus']} cores)")
    bottom = np.zeros(len(modes))
    for phase in ("proximal", "forward_backward", "optimizer"):
        vals = np.array([results["modes"][m]["split_s"][phase] for m in modes])
        ax2.bar(modes, vals, bottom=bottom, label=phase)
        bottom += vals
    ax2.set_ylabel("seconds per step (median)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--rows", type=int, default=48, help="steps (rows) per batch, e.g. 2 groups x 8 x 3 steps")
    parser.add_argument("--output-tokens", type=int, default=96)
    parser.add_argument("--images", type=int, default=8, help="distinct screenshots in the batch")
    parser.add_argument("--token-budget", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for world in args.worlds:
            name = "1 process" if world == 1 else f"FSDP2 x{world} (gloo)"
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            runs.setdefault(name, []).append(run_mode(args, world))
    modes = {}
    for name, rs in runs.items():
        best = sorted(rs, key=lambda x: x["tokens_per_s"])[len(rs) // 2]
        modes[name] = best | {"tokens_per_s_runs": [x["tokens_per_s"] for x in rs]}
    first = next(iter(modes.values()))
    results = {
        "benchmark": "trainer",
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "gpu": None},
        "workload": {"model": f"tiny {args.family} (shipped, random weights)", "rows": args.rows,
                     "prompt_tokens_mean": first["prompt_tokens_mean"], "output_tokens": args.output_tokens,
                     "tokens_per_step": first["tokens_per_step"]},
        "modes": modes,
        "tokens_per_s": first["tokens_per_s"],
        "command": "make bench-trainer",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainer.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "trainer.png")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
