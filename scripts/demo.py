"""``make demo``: the local stack, the demo job, live progress, and a report.

1. ``asyncwebrl up``: redis-server (AOF), envfleet, buffer, weightsync and the api.
2. The demo job (``examples/jobs/demo.yaml``): a supervised warm-start on the
   reference agent's demonstrations, then asynchronous GRPO with 1/k.
3. Evaluations on held-out seeds: the untrained model, the warm-started policy
   (version 0 of RL) and the final version, while one line a few seconds shows
   the phase, version, training success, throughput and staleness.
4. ``<run-dir>/report.json``, ``report.md`` and ``learning_curve.png``; the viewer's URL.

The stack stays up for inspection; ``make demo-down`` stops it.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

from asyncwebrl.api.client import Client, load_job
from asyncwebrl.api.stack import load_stack

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOAL_TOTAL, GOAL_RL = 0.30, 0.10


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_eval(client: Client, job: str, eval_id: str, timeout: float = 1200) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/v1/jobs/{job}/evaluations/{eval_id}")
        if doc["state"] != "running":
            return doc
        time.sleep(3)
    raise SystemExit(f"demo: evaluation {eval_id} did not finish in {timeout:.0f}s")


def std_err(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def plot(path: pathlib.Path, warm: list[dict], rl: list[dict], evals: dict[str, dict]) -> None:
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
        ax.plot(steps, success, color="#9ab", lw=1, label="training batches (sampled, train seeds)")
        ax.plot(steps, smooth, color="#1f5fa8", lw=2, label=f"training, mean of {window} steps")
    last = rl[-1]["step"] if rl else 1
    marks = [("base", 0, "#999", "untrained model"), ("warm", 0, "#e08a00", "after the warm-start (RL v0)"),
             ("final", last, "#1a8a3a", f"after RL (v{evals['final']['version'] if 'final' in evals else '?'})")]
    for key, x, colour, label in marks:
        if key in evals and evals[key]["result"]:
            r = evals[key]["result"]
            se = std_err(r["success"], r["episodes"])
            ax.errorbar([x], [r["success"]], yerr=[2 * se], fmt="o", ms=8, color=colour, capsize=4,
                        label=f"held-out: {label} {r['success']:.2f}")
    ax.set_xlabel("RL training step (version)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"asyncwebrl demo: warm-start ({len(warm)} SFT steps), then asynchronous GRPO 1/k")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(run_dir: pathlib.Path, job: dict, evals: dict[str, dict], warm: list[dict], rl: list[dict],
           started: float, viewer: str) -> dict:
    results = {k: v["result"] for k, v in evals.items() if v.get("result")}
    out: dict = {"job": job["id"], "state": job["state"], "wall_s": round(time.monotonic() - started, 1),
                 "evaluations": {k: {"version": evals[k]["version"], "id": evals[k]["id"], **r}
                                 for k, r in results.items()}}
    def gain(a: dict, b: dict) -> tuple[float, float]:
        return (b["success"] - a["success"],
                math.sqrt(std_err(a["success"], a["episodes"]) ** 2 + std_err(b["success"], b["episodes"]) ** 2))

    if "warm" in results and "final" in results:
        margin, se = gain(results["warm"], results["final"])
        out["rl_margin"] = round(margin, 4)
        out["rl_margin_std_err"] = round(se, 4)
        out["rl_margin_clear"] = margin > 2 * se
    if "base" in results and "warm" in results:
        out["warm_start_margin"] = round(results["warm"]["success"] - results["base"]["success"], 4)
    if "base" in results and "final" in results:
        total, se = gain(results["base"], results["final"])
        out["total_margin"] = round(total, 4)
        out["total_margin_std_err"] = round(se, 4)
        # The demo's goal: +30 points over the untrained model, RL's own share at least 10 points and > 2 s.e.
        out["goal_met"] = bool(total >= GOAL_TOTAL and out.get("rl_margin", 0) >= GOAL_RL and out.get("rl_margin_clear"))
    if rl:
        seconds = sum(sum(r.get("seconds", {}).values()) for r in rl)
        episodes = sum(r.get("episodes", 0) for r in rl)
        out["throughput"] = {
            "rl_steps": len(rl), "rl_wall_s": round(rl[-1]["unix"] - rl[0]["unix"] + sum(rl[0].get("seconds", {}).values()), 1),
            "trajectories_per_hour": round(episodes * 3600 / seconds, 1) if seconds else None,
            "env_steps_per_s": round(sum(r.get("env_steps", 0) for r in rl) / seconds, 3) if seconds else None,
            "train_tokens_per_s": round(sum(r.get("train_tokens_per_s", 0) for r in rl) / len(rl), 1),
            "mean_staleness": round(sum(r.get("staleness_mean", 0) for r in rl) / len(rl), 3),
        }
    out["viewer"] = viewer
    (run_dir / "report.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(run_dir / "learning_curve.png", warm, rl, evals)

    lines = [f"# asyncwebrl demo report: {job['id']}", "",
             f"Job state: {job['state']}; wall time {out['wall_s']:.0f} s; held-out seeds "
             f"(test split, seed {job['spec']['tasks']['eval_seed']}).", "",
             "| policy | version | task | episodes | success (s.e.) | mean steps | steps of successes "
             "| steps of failures | valid actions |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    names = {"base": "untrained model", "warm": "after the warm-start", "final": "after RL"}

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for key in ("base", "warm", "final"):
        if key not in results:
            continue
        r = results[key]
        for task, d in [("all", r), *(r.get("by_task") or {}).items()]:
            lines.append(f"| {names[key]} | {evals[key]['version']} | {task} | {d['episodes']} | "
                         f"{d['success']:.3f} ({std_err(d['success'], d['episodes']):.3f}) | "
                         f"{num(d['mean_steps'], '.2f')} | {num(d.get('mean_steps_success'), '.2f')} | "
                         f"{num(d.get('mean_steps_failure'), '.2f')} | {num(d['valid_actions'], '.3f')} |")
    if "rl_margin" in out:
        lines += ["", f"RL on its own: {out['rl_margin']:+.3f} success (standard error {out['rl_margin_std_err']:.3f}; "
                      f"{'a clear margin, above two standard errors' if out['rl_margin_clear'] else 'NOT a clear margin'})."]
    if "warm_start_margin" in out:
        lines.append(f"Warm-start on its own: {out['warm_start_margin']:+.3f}.")
    if "total_margin" in out:
        lines.append(f"Over the untrained model: {out['total_margin']:+.3f} (standard error "
                     f"{out['total_margin_std_err']:.3f}). Goal (+{GOAL_TOTAL:.2f} in all, RL +{GOAL_RL:.2f} and "
                     f"above two standard errors): {'met' if out['goal_met'] else 'NOT met'}.")
    if "throughput" in out:
        t = out["throughput"]
        lines += ["", f"RL: {t['rl_steps']} steps in {t['rl_wall_s']:.0f} s; {t['trajectories_per_hour']} trajectories/hour, "
                      f"{t['env_steps_per_s']} env steps/s, {t['train_tokens_per_s']} train tokens/s, "
                      f"mean staleness {t['mean_staleness']} versions."]
    lines += ["", "![learning curve](learning_curve.png)", "", f"Viewer: {viewer}", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    print("\n".join(lines[:-3]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo", help="The stack's run directory (report written there).")
    parser.add_argument("--job", default=str(ROOT / "examples/jobs/demo.yaml"), help="Job document (YAML).")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="Override a job field, e.g. algorithm.max_steps=10.")
    parser.add_argument("--chromium-path", default="/usr/bin/chromium")
    parser.add_argument("--eval-episodes", type=int, default=128, help="Held-out episodes per evaluation.")
    args = parser.parse_args()
    started = time.monotonic()
    run_dir = pathlib.Path(args.run_dir).resolve()
    cli = [sys.executable, "-m", "asyncwebrl.api.cli", "--run-dir", str(run_dir)]

    say("bringing the local stack up")
    subprocess.run([*cli, "up", "--contexts", "16", "--warm-reset", "--chromium-path", args.chromium_path],
                   check=True)
    stack = load_stack(run_dir)
    client = Client(stack["api_url"], stack["api_token"])
    spec = load_job(args.job, args.set)
    job = client.request("POST", "/v1/jobs", spec)
    jid = job["id"]
    say(f"submitted {jid}: {spec['algorithm'].get('warm_start_steps', 0)} warm-start steps, then "
        f"{spec['algorithm']['max_steps']} GRPO steps (step_norm {spec['algorithm']['step_norm']}, "
        f"k {spec['algorithm']['k']}, eta {spec['rollout']['max_staleness']})")

    # Many instances with few episodes each: the success estimate varies less than with big groups.
    ev = {"groups": args.eval_episodes // 4, "group_size": 4}
    evals: dict[str, dict] = {"base": client.request("POST", f"/v1/jobs/{jid}/evaluate", {**ev, "base": True})}
    say(f"evaluating the untrained model on held-out seeds ({evals['base']['id']})")
    last_line, since = "", 0
    rl: list[dict] = []
    while True:
        job = client.get(f"/v1/jobs/{jid}")
        if job.get("phase") == "rl" and "warm" not in evals:
            evals["warm"] = client.request("POST", f"/v1/jobs/{jid}/evaluate", {**ev, "version": 0})
            say(f"warm-start done; evaluating it on held-out seeds ({evals['warm']['id']}) while RL runs")
        page = client.get(f"/v1/jobs/{jid}/metrics?since_step={since}")
        rl += page["series"]
        since = page["next_since_step"]
        row = rl[-1] if rl else {}
        line = (f"{job['state']:<9} phase {job.get('phase') or '-':<10} version {job['progress']['version']:>3}"
                + (f"  success {row['success']:.2f}  traj/h {row['trajectories_per_hour']:.0f}  env steps/s "
                   f"{row['env_steps_per_s']:.2f}  staleness {row['staleness_mean']:.2f}" if row else ""))
        if line != last_line:
            say(line)
            last_line = line
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(3)
    if job["state"] != "succeeded":
        raise SystemExit(f"demo: the job ended {job['state']}: {job['reason']}")
    evals["final"] = client.request("POST", f"/v1/jobs/{jid}/evaluate", ev)
    say(f"training done; evaluating version {evals['final']['version']} on held-out seeds ({evals['final']['id']})")
    for key in evals:
        evals[key] = wait_eval(client, jid, evals[key]["id"])
        if evals[key]["state"] != "succeeded":
            raise SystemExit(f"demo: evaluation {key} {evals[key]['state']}: {evals[key]['reason']}")
    warm = client.get(f"/v1/jobs/{jid}/metrics?phase=warm_start")["series"]
    viewer = f"{stack['api_url']}/viewer/{jid}#token={stack['api_token']}"
    out = report(run_dir, job, evals, warm, rl, started, viewer)
    print(json.dumps(out))
    say(f"report: {run_dir / 'report.md'}, {run_dir / 'learning_curve.png'}")
    say(f"the stack is still up for inspection: open the viewer at {viewer}")
    say(f"stop it with: make demo-down   (or .venv/bin/asyncwebrl --run-dir {args.run_dir} down)")


if __name__ == "__main__":
    main()
