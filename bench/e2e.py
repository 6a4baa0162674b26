"""`make bench-e2e` / `make bench-staleness`: the same job, synchronous and asynchronous, for the same wall time.

The local stack (``asyncwebrl up``) and jobs submitted to its REST api. One
warm-start on the reference agent's click-task demonstrations; then, from its
checkpoint, the same GRPO job (1/k, group 8, batch 4 groups, 16 episodes in
flight, lr 1e-3) in each mode:

  sync     eta = 0 with the gateway's barrier: produce the batch, train, push the
           weights, repeat (the synchronous pipeline)
  eta_N    asynchronous, groups at most N versions behind the trainer

Tasks: MiniWoB click-test and click-button (a missed click may be retried, so
1-2 steps) and the built-in mail client's invoice lookup (4 steps; the tiny
policy never solves it, so those groups run to the step limit): successes end
early, failures run long, and a synchronous batch waits for its longest episode.
Zero-variance groups are kept, so every mode trains on every group it produces.

Each mode runs for ``--window`` seconds after its first training step. Reported:
trajectories/hour and env steps/s the trainer consumed (steady state, between
its first and last step), the trainer's busy fraction (not waiting for a batch),
the browsers' busy fraction (Allocate and Step time over episode slots), and the
mean seconds per step of rollout, training and weight sync measured in the
synchronous run; from those the ideal speed-up of overlapping them,
(rollout + train + sync) / max(rollout, train). ``speedup`` is the best
asynchronous mode of eta 1, 2, 4 over sync.

With ``--staleness`` also writes the sweep's table (bench/results/staleness.json):
throughput, success of the episodes trained in the window's second half, and the
fraction of groups the buffer rejected as too stale, per eta.

Prints one JSON object on its last line; writes bench/results/e2e.json and .png.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile


from jobs import (CLICK_TASKS, RESULTS, Stack, base_spec, machine, merge, now_iso, ratio_std_err,  # noqa: E402
                  rejected_fraction, say, stage_times, throughput, weighted_mean)

NAME = "e2e"
TASKS = [*CLICK_TASKS, "webgym-lite/mail/invoice-amount"]
PAPER = "AsyncWebRL: 2.4-2.9x trajectories/hour over a synchronous pipeline (WebGym) on the same GPUs"


def job_spec(warm: str, eta: int | None, lr: float) -> dict:
    mode = "sync" if eta is None else "async"
    name = "e2e-sync" if eta is None else f"e2e-eta{eta}"
    return merge(base_spec(name), model={"path": warm},
                 tasks={"tasks": TASKS, "difficulties": ["easy", "medium"], "train_seed": 11},
                 algorithm={"keep_zero_variance": True, "lr": lr},
                 rollout={"mode": mode, "max_staleness": 0 if eta is None else eta,
                          "steps_easy": 2, "steps_medium": 4})


def late_success(rows: list[dict]) -> float | None:
    """Success of the easy (click) episodes trained in the window's second half."""
    return weighted_mean(rows[len(rows) // 2:], "", lambda r: r.get("success_by_difficulty", {}).get("easy"))


def summarise(runs: dict[str, dict]) -> dict:
    modes = {}
    for key, run in runs.items():
        t = throughput(run)
        rows = run["rows"]
        modes[key] = {**t, "late_success_easy": late_success(rows),
                      "stale_rejected_fraction": rejected_fraction(rows, "stale"),
                      "staleness_mean": statistics.fmean(r["staleness_mean"] for r in rows),
                      "mean_episode_steps": sum(r["env_steps"] for r in rows) / max(1, sum(r["episodes"] for r in rows)),
                      "job": run["job"]}
    return modes


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = results["modes"]
    keys = list(modes)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bars = ax1.bar(keys, [modes[k]["trajectories_per_hour"] for k in keys],
                   color=["#888" if k == "sync" else "#2a7" for k in keys])
    ax1.bar_label(bars, fmt="%.0f")
    ideal = results["ideal_speedup"] * modes["sync"]["trajectories_per_hour"]
    ax1.axhline(ideal, ls="--", color="#c33", label=f"ideal overlap ({results['ideal_speedup']:.2f}x sync)")
    ax1.set_ylabel("trained trajectories / hour")
    ax1.set_title(f"async vs sync: best {results['speedup']:.2f}x")
    ax1.legend(loc="lower right")
    x = range(len(keys))
    ax2.plot(x, [modes[k]["trainer_busy_fraction"] for k in keys], "o-", label="trainer busy")
    ax2.plot(x, [modes[k]["browser_busy_fraction"] for k in keys], "s-", label="browser slots busy")
    ax2.set_xticks(list(x), keys)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("fraction of wall time")
    ax2.legend()
    m = results["machine"]
    fig.suptitle(f"end to end, tiny Qwen2.5-VL on CPU, {m['cpus']} cores, {results['window_s']:.0f}s per mode")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_staleness(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["etas"]
    etas = [r["eta"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].plot(etas, [r["trajectories_per_hour"] for r in rows], "o-")
    axes[0].set_ylabel("trained trajectories / hour")
    axes[1].plot(etas, [r["late_success_easy"] or 0 for r in rows], "o-", color="#2a7")
    axes[1].set_ylabel("success, second half (click tasks)")
    axes[2].plot(etas, [r["stale_rejected_fraction"] for r in rows], "o-", color="#c33")
    axes[2].set_ylabel("groups rejected as stale")
    for ax in axes:
        ax.set_xlabel("max staleness eta (0 = sync)")
        ax.set_xticks(etas)
    fig.suptitle(f"staleness sweep, {results['window_s']:.0f}s per eta")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etas", default="1,2,4", help="asynchronous modes to run beside sync")
    parser.add_argument("--window", type=float, default=180.0,
                        help="seconds per mode after its first step (longer if it has not trained 3 steps by then)")
    parser.add_argument("--min-steps", type=int, default=10,
                        help="training steps each mode runs at least, window or not (3 or more: a rate's standard "
                             "error needs two intervals)")
    parser.add_argument("--warm-steps", type=int, default=16, help="supervised warm-start steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--staleness", action="store_true", help="also write bench/results/staleness.json")
    parser.add_argument("--run-dir", default="", help="stack run directory (default: a temporary one)")
    args = parser.parse_args()
    etas = [int(e) for e in args.etas.split(",") if e]
    if any(e < 1 for e in etas):
        parser.error("--etas: asynchronous modes have eta >= 1 (sync is always run)")
    if args.min_steps < 3:
        parser.error("--min-steps: at least 3 (a rate's standard error needs two intervals)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_dir = pathlib.Path(args.run_dir or tempfile.mkdtemp(prefix="bench-e2e-"))
    runs: dict[str, dict] = {}
    with Stack(run_dir, NAME) as stack:
        warm = stack.warm_start(base_spec("e2e"), args.warm_steps)
        for eta in [None, *etas]:
            key = "sync" if eta is None else f"eta_{eta}"
            say(NAME, f"{key}: {args.window:.0f}s after its first step")
            runs[key] = stack.run(job_spec(warm, eta, args.lr), window_s=args.window, min_steps=args.min_steps)
    modes = summarise(runs)
    stages = stage_times(runs["sync"]["rows"])
    ideal = (stages["rollout"] + stages["train"] + stages["sync"]) / max(stages["rollout"], stages["train"])
    best = max((k for k in modes if k in {f"eta_{e}" for e in etas if e <= 4}),
               key=lambda k: modes[k]["trajectories_per_hour"], default=None)
    sync_tph = modes["sync"]["trajectories_per_hour"]
    speedup = modes[best]["trajectories_per_hour"] / sync_tph if best else None
    speedup_se = ratio_std_err(modes[best]["trajectories_per_hour"], modes[best]["trajectories_per_hour_se"],
                               sync_tph, modes["sync"]["trajectories_per_hour_se"]) if best else None
    results = {
        "benchmark": NAME, "date": now_iso(), "machine": machine(),
        "command": "python bench/e2e.py " + " ".join(sys.argv[1:]),
        "workload": {"tasks": TASKS, "steps": {"easy": 2, "medium": 4}, "group_size": 8, "batch_groups": 4,
                     "concurrency": 16, "model": "tiny/qwen2_5_vl (warm-started)", "lr": args.lr,
                     "warm_start_steps": args.warm_steps, "device": "cpu"},
        "window_s": args.window,
        "modes": modes,
        "sync_stage_seconds": stages,
        "ideal_speedup": ideal,
        "best_eta": best,
        "speedup": speedup,
        "speedup_se": speedup_se,
        "fraction_of_ideal": speedup / ideal if speedup else None,
        "paper": PAPER,
    }
    (RESULTS / "e2e.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, RESULTS / "e2e.png")
    if args.staleness:
        table = [{"eta": 0 if k == "sync" else int(k.split("_")[1]), **{f: v[f] for f in (
            "trajectories_per_hour", "env_steps_per_s", "late_success_easy", "stale_rejected_fraction",
            "staleness_mean", "trainer_busy_fraction", "steps")}} for k, v in modes.items()]
        stale = {"benchmark": "staleness", "date": results["date"], "machine": results["machine"],
                 "command": results["command"], "workload": results["workload"], "window_s": args.window,
                 "etas": sorted(table, key=lambda r: r["eta"])}
        (RESULTS / "staleness.json").write_text(json.dumps(stale, indent=1) + "\n")
        plot_staleness(stale, RESULTS / "staleness.png")
    print(json.dumps({k: results[k] for k in ("benchmark", "speedup", "speedup_se", "ideal_speedup", "best_eta",
                                              "fraction_of_ideal")}
                     | {"trajectories_per_hour": {k: round(v["trajectories_per_hour"]) for k, v in modes.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
