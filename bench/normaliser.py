"""`make bench-normaliser`: GRPO with the constant step normaliser 1/k against 1/|tau|,
on multi-step tasks whose failures run to a long step limit.

The local stack (``asyncwebrl up``) and jobs submitted to its REST api. The
tasks and the warm-start are the demo job's (``examples/jobs/demo.yaml``), with
the step limit raised to ``--step-limit`` (8 by default): a success takes the
task's own steps (one click on the demo's click-test), a failure runs all 8. From one warm-start checkpoint, the same
job with a_ij = A_i / k for k = 10 and for k = the step limit, and with
a_ij = A_i / |tau_i|, for several seeds, each for the same number of training
steps, interleaved (seed 1 all three, seed 2 all three, ...).

The paper's finding to check: 1/k contracts trajectories (fewer steps per
episode) at equal or better success. Under 1/|tau| a long failure's penalty is
spread thin over its steps; under 1/k every step carries it in full.

Reported per variant and per seed, for the first and last third of the steps:
success, steps per episode, steps of successful and of failed episodes, tokens
per step; the curves over training are in the plot.
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

from jobs import DEMO, RESULTS, Stack, machine, merge, now_iso, say, third, weighted_mean

from asyncwebrl.api.client import load_job

NAME = "normaliser"
BASELINE = "tau"
FIELDS = ("success", "steps_per_episode", "length_success", "length_failure", "tokens_per_step")


def variants(step_limit: int) -> dict[str, dict]:
    """name -> the job's step normaliser and its label; the last is the baseline."""
    return {"k10": {"step_norm": "constant", "k": 10, "label": "1/k, k=10"},
            "klimit": {"step_norm": "constant", "k": step_limit, "label": f"1/k, k={step_limit} (the step limit)"},
            BASELINE: {"step_norm": "trajectory", "k": None, "label": "1/|tau|"}}


def job_spec(demo: dict, warm: str, variant: dict, name: str, seed: int, steps: int, step_limit: int) -> dict:
    algorithm = {**demo["algorithm"], "step_norm": variant["step_norm"], "max_steps": steps, "warm_start_steps": 0,
                 # Kept: a policy that fails whole groups still trains (on nothing) and the run reaches
                 # its steps, its collapse visible in the curves, instead of waiting for a group to learn from.
                 "keep_zero_variance": True}
    if variant["k"] is not None:
        algorithm["k"] = variant["k"]
    return merge(demo, name=f"norm-{name}-s{seed}", model={**demo["model"], "path": warm},
                 tasks={**demo["tasks"], "train_seed": 100 + seed}, algorithm=algorithm,
                 rollout={**demo["rollout"], "steps_easy": step_limit})


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else None


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


def per_seed(curves: dict[str, list[list[dict]]]) -> list[dict]:
    """Each seed's first and last thirds, per variant: the table BENCHMARKS.md shows."""
    seeds = min(len(v) for v in curves.values())
    return [{name: {part: phase(curves[name][i], part) for part in ("first", "last")} for name in curves}
            for i in range(seeds)]


def noise(curves: dict[str, list[list[dict]]], name: str) -> dict:
    """How far variant ``name``'s last third is from the baseline's against chance: the difference
    per seed (``name`` minus 1/|tau|) and the binomial standard error of the pooled success difference."""
    seeds = [{f: (None if a[f] is None or b[f] is None else a[f] - b[f]) for f in ("success", "steps_per_episode")}
             for a, b in ((phase(c, "last"), phase(t, "last")) for c, t in zip(curves[name], curves[BASELINE]))]
    var = 0.0
    for norm in (name, BASELINE):
        rows = [r for per_seed_rows in curves[norm] for r in third(per_seed_rows, "last")]
        n = sum(r["episodes"] for r in rows)
        p = weighted_mean(rows, "success")
        if not n or p is None:
            return {"per_seed_last_third": seeds, "success_difference_se": None}
        var += p * (1 - p) / n
    return {"per_seed_last_third": seeds, "success_difference_se": math.sqrt(var)}


def finding(summary: dict, name: str) -> dict:
    """The paper's claim for variant ``name`` against 1/|tau|, on the last thirds."""
    c, t = summary[name]["last"], summary[BASELINE]["last"]
    shorter = None if c["steps_per_episode"] is None or t["steps_per_episode"] is None else \
        c["steps_per_episode"] < t["steps_per_episode"]
    not_worse = None if c["success"] is None or t["success"] is None else c["success"] >= t["success"] - 0.05
    return {"episodes_shorter": shorter, "success_equal_or_better": not_worse, "holds": bool(shorter and not_worse)}


def plot(results: dict, curves: dict[str, list[list[dict]]], labels: dict[str, str], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(labels, ("#2a7", "#27a", "#c63")))
    titles = {"success": "success (train episodes)", "steps_per_episode": "steps per episode",
              "length_success": "steps of successful episodes",
              "length_failure": "steps of failed episodes", "tokens_per_step": "tokens per step"}
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8))
    for ax, field in zip(axes, FIELDS):
        for norm, runs in curves.items():
            steps = max(len(rows) for rows in runs)
            for rows in runs:
                ax.plot([r["step"] for r in rows], [r.get(field) for r in rows], color=colours[norm], alpha=0.25,
                        lw=0.8)
            mean = [_mean(rows[i].get(field) for rows in runs if i < len(rows)) for i in range(steps)]
            ax.plot(range(1, steps + 1), mean, color=colours[norm], lw=2, label=labels[norm])
        ax.set_title(titles[field])
        ax.set_xlabel("training step")
    axes[0].legend()
    w = results["workload"]
    fig.suptitle(f"1/k vs 1/|tau|: {', '.join(t.split('/')[-1] for t in w['tasks'])}, step limit {w['step_limit']}, "
                 f"{results['seeds']} seeds, {results['steps']} steps each (thin: one seed, thick: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="training steps per run")
    parser.add_argument("--step-limit", type=int, default=8, help="steps an episode may take (a failure takes all)")
    parser.add_argument("--warm-steps", type=int, default=0, help="supervised warm-start steps (default: the demo's)")
    parser.add_argument("--job", default=str(DEMO), help="the job whose tasks and warm-start are used")
    parser.add_argument("--run-dir", default="", help="stack run directory (default: a temporary one)")
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 2 or not 1 <= args.step_limit <= 64:
        parser.error("--seeds >= 1, --steps >= 2 (the summary compares the first and last thirds of the run), "
                     "--step-limit 1-64")
    demo = load_job(args.job, [])
    warm_steps = args.warm_steps or demo["algorithm"].get("warm_start_steps", 0)
    kinds = variants(args.step_limit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_dir = pathlib.Path(args.run_dir or tempfile.mkdtemp(prefix="bench-normaliser-"))
    curves: dict[str, list[list[dict]]] = {n: [] for n in kinds}
    runs: list[dict] = []
    with Stack(run_dir, NAME) as stack:
        warm = stack.warm_start(demo, warm_steps) if warm_steps else demo["model"]["path"]
        for seed in range(1, args.seeds + 1):
            for name, variant in kinds.items():
                say(NAME, f"{variant['label']}, seed {seed}: {args.steps} steps")
                run = stack.run(job_spec(demo, warm, variant, name, seed, args.steps, args.step_limit),
                                steps=args.steps)
                rows = run["rows"][:args.steps]
                runs.append({"variant": name, "seed": seed, "job": run["job"], "steps": len(rows),
                             "stalled": run["stalled"]})
                for r in rows:
                    r["steps_per_episode"] = r["env_steps"] / max(1, r["episodes"])
                curves[name].append(rows)
    summary = summarise(curves)
    compared = [n for n in kinds if n != BASELINE]
    results = {
        "benchmark": NAME, "date": now_iso(), "machine": machine(),
        "command": "python bench/normaliser.py " + " ".join(sys.argv[1:]),
        "workload": {"tasks": demo["tasks"]["tasks"], "step_limit": args.step_limit,
                     "group_size": demo["rollout"]["group_size"], "batch_groups": demo["rollout"]["batch_groups"],
                     "eta": demo["rollout"]["max_staleness"], "lr": demo["algorithm"]["lr"],
                     "warm_start_steps": warm_steps, "model": demo["model"]["path"]},
        "variants": {n: v["label"] for n, v in kinds.items()}, "baseline": BASELINE,
        "seeds": args.seeds, "steps": args.steps,
        "summary": summary,
        "per_seed": per_seed(curves),
        "difference": {n: noise(curves, n) for n in compared},
        "runs": runs,
        "finding": {"criterion": "last third: fewer steps per episode with 1/k, and success with 1/k at least "
                                 "that of 1/|tau| minus 0.05",
                    **{n: finding(summary, n) for n in compared}},
        "curves": {n: [[{f: r.get(f) for f in ("step", "episodes", *FIELDS)} for r in rows] for rows in runs_]
                   for n, runs_ in curves.items()},
    }
    (RESULTS / "normaliser.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, curves, {n: v["label"] for n, v in kinds.items()}, RESULTS / "normaliser.png")
    print(json.dumps({"benchmark": NAME, "holds": {n: results["finding"][n]["holds"] for n in compared},
                      "last_third": {n: summary[n]["last"] for n in kinds}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
