"""`make bench-normaliser`: GRPO with the constant 1/k step normaliser against 1/|tau|.

The local stack (``asyncwebrl up``) and jobs submitted to its REST api. One
warm-start on the reference agent's click-task demonstrations; then, from its
checkpoint, the same job with ``step_norm: constant`` (a_ij = A_i / k, k = 10)
and ``step_norm: trajectory`` (a_ij = A_i / |tau_i|), for several seeds, each
for the same number of training steps, interleaved (seed 1 both, seed 2 both, ...).

The tasks are MiniWoB click-test and click-button with a step limit of 4: a
missed click may be retried, so a success takes 1-4 steps and a failure always
runs the full 4. The paper's finding to check: 1/k contracts trajectories
(fewer steps per episode) at equal or better success. Under 1/|tau| a long failure's
penalty is spread thin over its steps; under 1/k every step carries it in full.

Reported per normaliser (mean over seeds) for the first and last third of the
steps: success, steps per episode, steps of successful and of failed episodes,
tokens per step.
Prints one JSON object on its last line; writes bench/results/normaliser.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import tempfile

from jobs import CLICK_TASKS, RESULTS, Stack, base_spec, machine, merge, now_iso, say, weighted_mean

NAME = "normaliser"
NORMS = ("constant", "trajectory")
FIELDS = ("success", "steps_per_episode", "length_success", "length_failure", "tokens_per_step")


def job_spec(warm: str, norm: str, seed: int, steps: int) -> dict:
    return merge(base_spec(f"norm-{norm[:5]}-s{seed}"), model={"path": warm},
                 tasks={"tasks": CLICK_TASKS, "difficulties": ["easy"], "train_seed": 100 + seed},
                 # Kept: a policy that fails whole groups still trains (on nothing) and the run reaches
                 # its steps, its collapse visible in the curves, instead of waiting for a group to learn from.
                 algorithm={"step_norm": norm, "max_steps": steps, "keep_zero_variance": True},
                 rollout={"steps_easy": 4})


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else None


def third(rows: list[dict], part: str) -> list[dict]:
    """The first or last third of a run's steps (at least one)."""
    n = max(1, len(rows) // 3)
    return rows[:n] if part == "first" else rows[-n:]


def phase(rows: list[dict], part: str) -> dict:
    """Episode-weighted means over the first or last third of the steps."""
    chosen = third(rows, part)
    return {f: weighted_mean(chosen, f) for f in FIELDS}


def summarise(curves: dict[str, list[list[dict]]]) -> dict:
    out = {}
    for norm, per_seed in curves.items():
        out[norm] = {part: {f: _mean(phase(rows, part)[f] for rows in per_seed) for f in FIELDS}
                     for part in ("first", "last")}
        out[norm]["seeds"] = len(per_seed)
    return out


def noise(curves: dict[str, list[list[dict]]]) -> dict:
    """How far apart the two normalisers' last thirds are against chance: the difference per seed
    (1/k minus 1/|tau|) and the binomial standard error of the pooled success difference."""
    per_seed = [{f: (None if a[f] is None or b[f] is None else a[f] - b[f]) for f in ("success", "steps_per_episode")}
                for a, b in ((phase(c, "last"), phase(t, "last")) for c, t in zip(curves["constant"], curves["trajectory"]))]
    var = 0.0
    for norm in NORMS:
        rows = [r for per_seed_rows in curves[norm] for r in third(per_seed_rows, "last")]
        n = sum(r["episodes"] for r in rows)
        p = weighted_mean(rows, "success")
        if not n or p is None:
            return {"per_seed_last_third": per_seed, "success_difference_se": None}
        var += p * (1 - p) / n
    return {"per_seed_last_third": per_seed, "success_difference_se": math.sqrt(var)}


def plot(results: dict, curves: dict[str, list[list[dict]]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"constant": "#2a7", "trajectory": "#c63"}
    labels = {"constant": "1/k (constant, k=10)", "trajectory": "1/|tau| (trajectory)"}
    titles = {"success": "success (train episodes)", "steps_per_episode": "steps per episode",
              "length_success": "steps of successful episodes",
              "length_failure": "steps of failed episodes", "tokens_per_step": "tokens per step"}
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8))
    for ax, field in zip(axes, FIELDS):
        for norm, per_seed in curves.items():
            steps = max(len(rows) for rows in per_seed)
            for rows in per_seed:
                ax.plot([r["step"] for r in rows], [r.get(field) for r in rows], color=colours[norm], alpha=0.25,
                        lw=0.8)
            mean = [_mean(rows[i].get(field) for rows in per_seed if i < len(rows)) for i in range(steps)]
            ax.plot(range(1, steps + 1), mean, color=colours[norm], lw=2, label=labels[norm])
        ax.set_title(titles[field])
        ax.set_xlabel("training step")
    axes[0].legend()
    fig.suptitle(f"1/k vs 1/|tau|: click tasks, step limit 4, {results['seeds']} seeds, "
                 f"{results['steps']} steps each (thin: one seed, thick: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--warm-steps", type=int, default=16, help="supervised warm-start steps")
    parser.add_argument("--run-dir", default="", help="stack run directory (default: a temporary one)")
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 2:
        parser.error("--seeds >= 1 and --steps >= 2 (the summary compares the first and last thirds of the run)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_dir = pathlib.Path(args.run_dir or tempfile.mkdtemp(prefix="bench-normaliser-"))
    curves: dict[str, list[list[dict]]] = {n: [] for n in NORMS}
    runs: list[dict] = []
    with Stack(run_dir, NAME) as stack:
        warm = stack.warm_start(base_spec("norm"), args.warm_steps)
        for seed in range(1, args.seeds + 1):
            for norm in NORMS:
                say(NAME, f"step_norm {norm}, seed {seed}: {args.steps} steps")
                run = stack.run(job_spec(warm, norm, seed, args.steps), steps=args.steps)
                rows = run["rows"][:args.steps]
                runs.append({"step_norm": norm, "seed": seed, "job": run["job"], "steps": len(rows),
                             "stalled": run["stalled"]})
                for r in rows:
                    r["steps_per_episode"] = r["env_steps"] / max(1, r["episodes"])
                curves[norm].append(rows)
    summary = summarise(curves)
    c, t = summary["constant"]["last"], summary["trajectory"]["last"]
    contracts = c["steps_per_episode"] is not None and t["steps_per_episode"] is not None and \
        c["steps_per_episode"] < t["steps_per_episode"]
    equal_or_better = c["success"] is not None and t["success"] is not None and c["success"] >= t["success"] - 0.05
    results = {
        "benchmark": NAME, "date": now_iso(), "machine": machine(),
        "command": "python bench/normaliser.py " + " ".join(sys.argv[1:]),
        "workload": {"tasks": CLICK_TASKS, "step_limit": 4, "group_size": 8, "batch_groups": 4, "eta": 2,
                     "lr": 1e-3, "k": 10, "warm_start_steps": args.warm_steps, "model": "tiny/qwen2_5_vl"},
        "seeds": args.seeds, "steps": args.steps,
        "summary": summary,
        "difference": noise(curves),
        "runs": runs,
        "finding": {"criterion": "last third: fewer steps per episode with 1/k, and success with 1/k at least "
                                 "that of 1/|tau| minus 0.05",
                    "episodes_shorter_with_1_over_k": contracts,
                    "success_equal_or_better_with_1_over_k": equal_or_better,
                    "holds": contracts and equal_or_better},
        "curves": {n: [[{f: r.get(f) for f in ("step", "episodes", *FIELDS)} for r in rows] for rows in per_seed]
                   for n, per_seed in curves.items()},
    }
    (RESULTS / "normaliser.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, curves, RESULTS / "normaliser.png")
    print(json.dumps({"benchmark": NAME, "finding_holds": results["finding"]["holds"],
                      "last_third": {n: summary[n]["last"] for n in NORMS}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
