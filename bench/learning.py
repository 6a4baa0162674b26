"""`make bench-learning`: the demo's recipe on several seeds, and how many collapse.

The local stack (``asyncwebrl up``) and jobs submitted to its REST api. The job
is ``examples/jobs/demo.yaml`` itself (the recipe has one owner): its warm-start
runs once, then its RL phase runs from that checkpoint once per seed, the seed
setting both the gateway's training instances and the trainer's shuffling.

A run has collapsed when it stops training (every group all-fail, so every group
is zero-variance and dropped, and no step comes for ``--stall-s``), or when its
training success over the last third of its steps is below a third of the first
third's. Per seed it reports success and the invalid-action rate in the first and
last thirds, and the off-policy health that warns of a collapse: the smallest
effective sample size, the largest approximate KL to the proximal policy and
gradient norm, and the policy's entropy.

Prints one JSON object on its last line; writes bench/results/learning.json and .png.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

from jobs import DEMO, RESULTS, ROOT, Stack, machine, merge, now_iso, say, third, weighted_mean

from asyncwebrl.api.client import load_job

NAME = "learning"
COLLAPSE_RATIO = 1 / 3


def _extreme(rows: list[dict], field: str, pick) -> float | None:
    values = [r[field] for r in rows if isinstance(r.get(field), (int, float)) and r[field] == r[field]]
    return pick(values) if values else None


def verdict(rows: list[dict], steps: int, stalled: bool) -> dict:
    """One seed's summary and whether it collapsed."""
    first, last = weighted_mean(third(rows, "first"), "success"), weighted_mean(third(rows, "last"), "success")
    fell = first is not None and last is not None and first > 0 and last < COLLAPSE_RATIO * first
    return {
        "steps": len(rows), "steps_asked": steps, "stalled": stalled,
        "success_first_third": first, "success_last_third": last,
        "invalid_first_third": weighted_mean(third(rows, "first"), "invalid_action_rate"),
        "invalid_last_third": weighted_mean(third(rows, "last"), "invalid_action_rate"),
        "entropy_first_third": weighted_mean(third(rows, "first"), "entropy"),
        "entropy_last_third": weighted_mean(third(rows, "last"), "entropy"),
        "min_ess": _extreme(rows, "ess", min), "max_approx_kl": _extreme(rows, "approx_kl", max),
        "max_grad_norm": _extreme(rows, "grad_norm", max),
        # The trust region (max_step_kl): steps it undid at least once, halvings in all, steps it skipped.
        "max_step_kl": _extreme(rows, "step_kl", max),
        "steps_backtracked": sum(1 for r in rows if r.get("backtracks")),
        "backtracks": sum(r.get("backtracks") or 0 for r in rows),
        "steps_skipped": sum(1 for r in rows if r.get("step_skipped")),
        "collapsed": bool(stalled or fell),
    }


def plot(per_seed: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for run in per_seed:
        rows = run["rows"]
        style = {"lw": 1.2, "ls": "--" if run["collapsed"] else "-",
                 "label": f"seed {run['seed']}" + (" (collapsed)" if run["collapsed"] else "")}
        for ax, field in zip(axes, ("success", "invalid_action_rate", "entropy")):
            ax.plot([r["step"] for r in rows], [r.get(field) for r in rows], **style)
    for ax, name in zip(axes, ("training success", "invalid-action rate", "policy entropy")):
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="RL steps per seed (default: the demo job's)")
    parser.add_argument("--job", default=str(DEMO), help="the job document whose recipe is run")
    parser.add_argument("--stall-s", type=float, default=240.0,
                        help="a run with no training step for this long has collapsed (starved)")
    parser.add_argument("--run-dir", default="", help="stack run directory (default: a temporary one)")
    parser.add_argument("--out", default="learning", help="results name under bench/results/")
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 0 or args.steps == 1:
        parser.error("--seeds >= 1, --steps 0 (the job's) or >= 2")
    spec = load_job(args.job, [])
    steps = args.steps or spec["algorithm"]["max_steps"]
    warm_steps = spec["algorithm"].get("warm_start_steps", 0)
    if not steps:
        parser.error(f"{args.job}: algorithm.max_steps is 0 (until cancelled): give --steps")
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_dir = pathlib.Path(args.run_dir or tempfile.mkdtemp(prefix="bench-learning-"))
    per_seed: list[dict] = []
    with Stack(run_dir, NAME) as stack:
        model = stack.warm_start(spec, warm_steps) if warm_steps else spec["model"]["path"]
        for seed in range(1, args.seeds + 1):
            job = merge(spec, name=f"learning-s{seed}", model={**spec["model"], "path": model},
                        tasks={**spec["tasks"], "train_seed": seed},
                        algorithm={**spec["algorithm"], "warm_start_steps": 0, "max_steps": steps})
            say(NAME, f"seed {seed}: {steps} RL steps of the demo recipe")
            run = stack.run(job, steps=steps, stall_s=args.stall_s)
            rows = run["rows"][:steps]
            per_seed.append({"seed": seed, "job": run["job"], **verdict(rows, steps, run["stalled"]),
                             "rows": [{f: r.get(f) for f in ("step", "episodes", "success", "invalid_action_rate",
                                                              "entropy", "ess", "approx_kl", "grad_norm")}
                                      for r in rows]})
            say(NAME, f"seed {seed}: {'COLLAPSED' if per_seed[-1]['collapsed'] else 'held'}; success "
                      f"{per_seed[-1]['success_first_third']} -> {per_seed[-1]['success_last_third']}")
    collapses = sum(r["collapsed"] for r in per_seed)
    gains = [r["success_last_third"] - r["success_first_third"] for r in per_seed
             if r["success_last_third"] is not None and r["success_first_third"] is not None]
    results = {
        "benchmark": NAME, "date": now_iso(), "machine": machine(),
        "command": "python bench/learning.py " + " ".join(sys.argv[1:]),
        "job": str(pathlib.Path(args.job).resolve().relative_to(ROOT)) if pathlib.Path(args.job).resolve()
        .is_relative_to(ROOT) else args.job,
        "workload": {"tasks": spec["tasks"]["tasks"], "steps": steps, "warm_start_steps": warm_steps,
                     "step_limit": spec["rollout"].get("steps_easy"), "lr": spec["algorithm"].get("lr")},
        "seeds": args.seeds, "collapses": collapses, "target_collapses": 0,
        "collapse_rule": f"stalled for {args.stall_s:.0f}s, or last-third training success below "
                         f"{COLLAPSE_RATIO:.2f} x the first third's",
        "success_gain_mean": statistics.fmean(gains) if gains else None,
        "success_gain_se": statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else None,
        "per_seed": per_seed,
    }
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(per_seed, RESULTS / f"{args.out}.png",
         f"the demo recipe on {args.seeds} seeds, {steps} RL steps each: {collapses} collapsed")
    print(json.dumps({"benchmark": NAME, "seeds": args.seeds, "collapses": collapses,
                      "success_gain_mean": results["success_gain_mean"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
