"""A job's report: held-out success of the untrained model, the warm-started policy and the trained one, with
standard errors, by task, difficulty and (for a task set) split, and the learning curve. ``make demo`` and
``asyncwebrl report JOB`` write it the same way: ``report.json``, ``report.md`` and ``learning_curve.png``."""

from __future__ import annotations

import json
import math
import pathlib

from asyncwebrl.api.client import Client, metrics_since, quote_part

POLICIES = {"base": "untrained model", "warm": "after the warm-start", "final": "after RL"}
ORDER = ("easy", "medium", "hard")


def std_err(p: float, n: int) -> float:
    """The binomial standard error of a success rate ``p`` over ``n`` episodes."""
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def fetch_series(client: Client, job_id: str, phase: str = "rl") -> list[dict]:
    """A job's per-step metrics (``phase``: rl or warm_start)."""
    got = metrics_since(client, job_id, 0, phase)
    return got[0] if got else []


def pick_evaluations(evaluations: list[dict]) -> dict[str, dict]:
    """The newest finished evaluation of each policy: base (the untrained model), warm (version 0 of RL, the
    warm-started policy) and final (the highest version trained)."""
    done = [e for e in evaluations if e.get("state") == "succeeded" and e.get("result")]
    picked: dict[str, dict] = {}
    for e in sorted(done, key=lambda e: e.get("n", 0)):
        if e.get("base"):
            picked["base"] = e
        elif e.get("version") == 0:
            picked["warm"] = e
        elif e.get("version", 0) >= picked.get("final", {}).get("version", 0):
            picked["final"] = e
    return picked


def _gain(a: dict, b: dict) -> tuple[float, float]:
    return (b["success"] - a["success"],
            math.sqrt(std_err(a["success"], a["episodes"]) ** 2 + std_err(b["success"], b["episodes"]) ** 2))


def summarise(job: dict, evals: dict[str, dict], rl: list[dict], goal: tuple[float, float] | None = None) -> dict:
    """The report's figures. ``goal``: (gain over the untrained model, RL's own gain), both in success."""
    results = {k: v["result"] for k, v in evals.items()}
    out: dict = {"job": job["id"], "state": job["state"],
                 "evaluations": {k: {"version": evals[k]["version"], "id": evals[k]["id"], **r}
                                 for k, r in results.items()}}
    if "warm" in results and "final" in results:
        margin, se = _gain(results["warm"], results["final"])
        out.update(rl_margin=round(margin, 4), rl_margin_std_err=round(se, 4), rl_margin_clear=margin > 2 * se)
    if "base" in results and "warm" in results:
        out["warm_start_margin"] = round(results["warm"]["success"] - results["base"]["success"], 4)
    if "base" in results and "final" in results:
        total, se = _gain(results["base"], results["final"])
        out.update(total_margin=round(total, 4), total_margin_std_err=round(se, 4))
        if goal is not None:
            out["goal"] = {"total": goal[0], "rl": goal[1]}
            out["goal_met"] = bool(total >= goal[0] and out.get("rl_margin", 0) >= goal[1]
                                   and out.get("rl_margin_clear"))
    if rl:
        seconds = sum(sum(r.get("seconds", {}).values()) for r in rl)
        episodes = sum(r.get("episodes", 0) for r in rl)
        out["throughput"] = {
            "rl_steps": len(rl),
            "rl_wall_s": round(rl[-1]["unix"] - rl[0]["unix"] + sum(rl[0].get("seconds", {}).values()), 1),
            "trajectories_per_hour": round(episodes * 3600 / seconds, 1) if seconds else None,
            "env_steps_per_s": round(sum(r.get("env_steps", 0) for r in rl) / seconds, 3) if seconds else None,
            "train_tokens_per_s": round(sum(r.get("train_tokens_per_s", 0) for r in rl) / len(rl), 1),
            "mean_staleness": round(sum(r.get("staleness_mean", 0) for r in rl) / len(rl), 3),
        }
    return out


def _slices(result: dict) -> list[tuple[str, dict]]:
    """A result's rows: all episodes, then by task, difficulty and split (each only where it splits them)."""
    rows = [("all", result)]
    by_task = result.get("by_task") or {}
    if len(by_task) > 1 or not (result.get("by_difficulty") or result.get("by_split")):
        rows += sorted(by_task.items())
    by_difficulty = result.get("by_difficulty") or {}
    if len(by_difficulty) > 1:
        rows += [(f"difficulty {d}", v) for d, v in
                 sorted(by_difficulty.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 9)]
    rows += [(f"split {s}", v) for s, v in sorted((result.get("by_split") or {}).items())]
    return rows


def markdown(out: dict, job: dict, title: str, viewer: str = "") -> list[str]:
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    tasks = job.get("spec", {}).get("tasks", {})
    lines = [f"# {title}: {job['id']}", "",
             f"Job state: {job['state']}" + (f"; wall time {out['wall_s']:.0f} s" if "wall_s" in out else "")
             + f"; held-out episodes (test split, seed {tasks.get('eval_seed', '-')}).", "",
             "| policy | version | episodes of | episodes | success (s.e.) | mean steps | steps of successes "
             "| steps of failures | valid actions |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, name in POLICIES.items():
        ev = out["evaluations"].get(key)
        if ev is None:
            continue
        for part, d in _slices(ev):
            lines.append(f"| {name} | {ev['version']} | {part} | {d['episodes']} | "
                         f"{d['success']:.3f} ({std_err(d['success'], d['episodes']):.3f}) | "
                         f"{num(d.get('mean_steps'), '.2f')} | {num(d.get('mean_steps_success'), '.2f')} | "
                         f"{num(d.get('mean_steps_failure'), '.2f')} | {num(d.get('valid_actions'), '.3f')} |")
    if not out["evaluations"]:
        lines.append("| (no finished evaluation: `asyncwebrl eval JOB --wait`) | | | | | | | | |")
    if "rl_margin" in out:
        lines += ["", f"RL on its own: {out['rl_margin']:+.3f} success (standard error {out['rl_margin_std_err']:.3f}; "
                      f"{'a clear margin, above two standard errors' if out['rl_margin_clear'] else 'NOT a clear margin'})."]
    if "warm_start_margin" in out:
        lines.append(f"Warm-start on its own: {out['warm_start_margin']:+.3f}.")
    if "total_margin" in out:
        line = f"Over the untrained model: {out['total_margin']:+.3f} (standard error {out['total_margin_std_err']:.3f})."
        if "goal" in out:
            line += (f" Goal (+{out['goal']['total']:.2f} in all, RL +{out['goal']['rl']:.2f} and above two standard "
                     f"errors): {'met' if out['goal_met'] else 'NOT met'}.")
        lines.append(line)
    if "throughput" in out:
        t = out["throughput"]
        lines += ["", f"RL: {t['rl_steps']} steps in {t['rl_wall_s']:.0f} s; {t['trajectories_per_hour']} "
                      f"trajectories/hour, {t['env_steps_per_s']} env steps/s, {t['train_tokens_per_s']} train "
                      f"tokens/s, mean staleness {t['mean_staleness']} versions."]
    lines += ["", "![learning curve](learning_curve.png)", ""]
    if viewer:
        lines += [f"Viewer: {viewer}", ""]
    return lines


def plot(path: pathlib.Path, warm: list[dict], rl: list[dict], evals: dict[str, dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if rl:
        steps = [r["step"] for r in rl]
        success = [r.get("success") or 0.0 for r in rl]
        window = 5
        smooth = [sum(success[max(0, i - window + 1):i + 1]) / len(success[max(0, i - window + 1):i + 1])
                  for i in range(len(success))]
        ax.plot(steps, success, color="#9ab", lw=1, label="training batches (sampled, train split)")
        ax.plot(steps, smooth, color="#1f5fa8", lw=2, label=f"training, mean of {window} steps")
    last = rl[-1]["step"] if rl else 1
    marks = [("base", 0, "#999", "untrained model"), ("warm", 0, "#e08a00", "after the warm-start (RL v0)"),
             ("final", last, "#1a8a3a", f"after RL (v{evals['final']['version'] if 'final' in evals else '?'})")]
    for key, x, colour, label in marks:
        if key in evals:
            r = evals[key]["result"]
            se = std_err(r["success"], r["episodes"])
            ax.errorbar([x], [r["success"]], yerr=[2 * se], fmt="o", ms=8, color=colour, capsize=4,
                        label=f"held-out: {label} {r['success']:.2f}")
    ax.set_xlabel("RL training step (version)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}: warm-start ({len(warm)} SFT steps), then GRPO; held-out +/- 2 s.e.", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out_dir: pathlib.Path, job: dict, evals: dict[str, dict], warm: list[dict], rl: list[dict],
                 title: str = "asyncwebrl report", viewer: str = "", goal: tuple[float, float] | None = None,
                 wall_s: float | None = None) -> tuple[dict, str]:
    """``report.json``, ``report.md`` and ``learning_curve.png`` in ``out_dir``; the figures and the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = summarise(job, evals, rl, goal)
    if wall_s is not None:
        out["wall_s"] = round(wall_s, 1)
    if viewer:
        out["viewer"] = viewer
    (out_dir / "report.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(out_dir / "learning_curve.png", warm, rl, evals, title)
    text = "\n".join(markdown(out, job, title, viewer))
    (out_dir / "report.md").write_text(text)
    return out, text


def job_report(client: Client, job_id: str, out_dir: pathlib.Path, **kwargs) -> tuple[dict, str]:
    """A job's report from the api: its finished evaluations (``pick_evaluations``) and its metrics."""
    job = client.get(f"/v1/jobs/{quote_part(job_id)}")
    evaluations = client.get(f"/v1/jobs/{quote_part(job_id)}/evaluations")["evaluations"]
    return write_report(out_dir, job, pick_evaluations(evaluations), fetch_series(client, job_id, "warm_start"),
                        fetch_series(client, job_id), **kwargs)
