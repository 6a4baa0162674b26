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
import pathlib
import subprocess
import sys
import time

from asyncwebrl.api.client import Client, load_job
from asyncwebrl.api.report import fetch_series, write_report
from asyncwebrl.api.stack import load_stack

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The demo's goal: +30 points over the untrained model, RL's own share at least 10 points and > 2 s.e.
GOAL = (0.30, 0.10)


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
    viewer = f"{stack['api_url']}/viewer/{jid}#token={stack['api_token']}"
    out, text = write_report(run_dir, job, evals, fetch_series(client, jid, "warm_start"), rl,
                             title="asyncwebrl demo report", viewer=viewer, goal=GOAL,
                             wall_s=time.monotonic() - started)
    print(text)
    print(json.dumps(out))
    say(f"report: {run_dir / 'report.md'}, {run_dir / 'learning_curve.png'}")
    say(f"the stack is still up for inspection: open the viewer at {viewer}")
    say(f"stop it with: make demo-down   (or .venv/bin/asyncwebrl --run-dir {args.run_dir} down)")


if __name__ == "__main__":
    main()
