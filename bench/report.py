"""BENCHMARKS.md from bench/results/*.json (run by `make bench`; by hand: python bench/report.py).

Every number in the page comes from a result file; a benchmark without one is
listed as not run. Each section names the file, its date and the command that
wrote it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(results: pathlib.Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def f(value, spec: str = ".2f", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def measured(value, met) -> str:
    """A target's verdict, or "-" for a measure this run did not take (e.g. --skip-peers)."""
    return "-" if value is None else f(met)


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out + [""]


def shown(results: pathlib.Path) -> str:
    """The results folder as the page names it: relative to the repository when inside it."""
    return str(results.relative_to(ROOT) if results.is_relative_to(ROOT) else results)


def provenance(doc: dict, name: str, results: pathlib.Path) -> str:
    return (f"*{shown(results)}/{name}.json, "
            f"{str(doc.get('date', '?'))[:10]}, `{doc.get('command', '?')}`*")


def plot_line(results: pathlib.Path, name: str, out: pathlib.Path) -> list[str]:
    png = results / f"{name}.png"
    if not png.is_file():
        return []
    rel = png.relative_to(out.parent) if png.is_relative_to(out.parent) else png
    return [f"![{name}]({rel})", ""]


def e2e_section(doc, results, out) -> tuple[list[str], list]:
    modes = doc["modes"]
    lines = ["## End to end: asynchronous vs synchronous (`make bench-e2e`)", "",
             f"The same job in each mode for {doc['window_s']:.0f} s after its first training step "
             f"(tasks {', '.join(doc['workload']['tasks'])}; group {doc['workload']['group_size']}, "
             f"batch {doc['workload']['batch_groups']} groups, {doc['workload']['concurrency']} episodes in flight).",
             ""]
    lines += table(["mode", "trained trajectories/h", "env steps/s", "trainer busy", "browser slots busy",
                    "mean staleness", "steps"],
                   [[k, f(m["trajectories_per_hour"], ".0f"), f(m["env_steps_per_s"]),
                     f(m["trainer_busy_fraction"]), f(m["browser_busy_fraction"]), f(m["staleness_mean"]),
                     m["steps"]] for k, m in modes.items()])
    s = doc["sync_stage_seconds"]
    # Runs before 2026-12-05 have no standard error: they trained 3-6 steps per mode.
    se = f"; the speed-up's standard error {f(doc['speedup_se'])}" if doc.get("speedup_se") is not None else \
        "; no standard error (3-6 steps per mode)"
    lines += [f"Stage times of the synchronous run, seconds per step: rollout {s['rollout']:.1f}, "
              f"train {s['train']:.1f}, weight sync {s['sync']:.2f}. Ideal speed-up of overlapping them, "
              f"(rollout + train + sync) / max(rollout, train): **{doc['ideal_speedup']:.2f}x**. Measured: "
              f"**{f(doc['speedup'])}x** ({doc['best_eta']}), {f((doc['fraction_of_ideal'] or 0) * 100, '.0f')}% "
              f"of the ideal{se}. The paper: {doc['paper']}.", "", provenance(doc, "e2e", results), ""]
    lines += plot_line(results, "e2e", out)
    row = ["end to end", "async over sync, trained trajectories/h", f"{f(doc['speedup'])}x (ideal "
           f"{doc['ideal_speedup']:.2f}x)", "2.4-2.9x (paper, GPUs)", f((doc["speedup"] or 0) >= 2.4)]
    return lines, row


def staleness_section(doc, results, out) -> tuple[list[str], list]:
    lines = ["## Staleness sweep (`make bench-staleness`)", "",
             f"The end-to-end job at each bound eta for {doc['window_s']:.0f} s; success is that of the click "
             "episodes trained in the window's second half.", ""]
    lines += table(["eta", "trained trajectories/h", "env steps/s", "success (2nd half)", "rejected as stale",
                    "mean staleness", "steps"],
                   [[r["eta"], f(r["trajectories_per_hour"], ".0f"), f(r["env_steps_per_s"]),
                     f(r["late_success_easy"]), f(r["stale_rejected_fraction"], ".3f"), f(r["staleness_mean"]),
                     r["steps"]] for r in doc["etas"]])
    lines += [provenance(doc, "staleness", results), ""] + plot_line(results, "staleness", out)
    best = max(doc["etas"], key=lambda r: r["trajectories_per_hour"])
    return lines, ["staleness", "best eta by throughput", f"eta {best['eta']}", "-", "-"]


def normaliser_section(doc, results, out) -> tuple[list[str], list]:
    if "variants" not in doc:  # a result file from before the multi-step comparison
        return ["## Step normaliser: 1/k vs 1/|tau| (`make bench-normaliser`)", "",
                f"{shown(results)}/normaliser.json predates the multi-step comparison: run `make bench-normaliser`.",
                ""], ["normaliser", "1/k contracts trajectories at equal or better success", "-", "holds (paper)", "-"]
    s, w, labels = doc["summary"], doc["workload"], doc["variants"]
    lines = ["## Step normaliser: 1/k vs 1/|tau| (`make bench-normaliser`)", "",
             f"{doc['seeds']} seeds x {doc['steps']} training steps per normaliser, on "
             f"{', '.join(w['tasks'])} with a step limit of {w['step_limit']} (a success takes the task's few "
             f"steps, a failure runs to the limit), from the demo's warm-start ({w['warm_start_steps']} supervised "
             "steps). Means over seeds:", ""]
    rows = []
    for name, label in labels.items():
        for part in ("first", "last"):
            p = s[name][part]
            rows.append([f"{label}, {part} third", f(p["success"]), f(p.get("steps_per_episode")),
                         f(p["length_success"]), f(p["length_failure"]), f(p["tokens_per_step"], ".1f")])
    lines += table(["normaliser, steps", "success", "steps per episode", "steps of successes", "steps of failures",
                    "tokens per step"], rows)
    lines += ["Per seed, last third (first third in brackets):", ""]
    rows = []
    for i, seed in enumerate(doc["per_seed"], start=1):
        for name, label in labels.items():
            a, b = seed[name]["first"], seed[name]["last"]
            rows.append([f"seed {i}, {label}", *[f"{f(b[k])} ({f(a[k])})" for k in
                                                  ("success", "steps_per_episode", "length_success",
                                                   "length_failure")]])
    lines += table(["seed, normaliser", "success", "steps per episode", "steps of successes", "steps of failures"],
                   rows)
    fnd = doc["finding"]
    for name, label in labels.items():
        if name == doc["baseline"]:
            continue
        lines += [f"{label} against 1/|tau| ({fnd['criterion']}): **{'holds' if fnd[name]['holds'] else 'does not hold'}**"
                  f" (episodes shorter: {f(fnd[name]['episodes_shorter'])}; success equal or better: "
                  f"{f(fnd[name]['success_equal_or_better'])}).", "",
                  *difference_lines(doc["difference"].get(name), label)]
    lines += [*[f"Run {r['variant']} seed {r['seed']} stopped after {r['steps']} steps: it trained no step for "
                "the stall limit." for r in doc.get("runs", []) if r.get("stalled")],
              provenance(doc, "normaliser", results), ""] + plot_line(results, "normaliser", out)
    k, tau = s["klimit"]["last"], s[doc["baseline"]]["last"]
    ours = (f"last third, 1/k (k={w['step_limit']}) vs 1/|tau|: {f(k.get('steps_per_episode'))} vs "
            f"{f(tau.get('steps_per_episode'))} steps/episode, success {f(k['success'])} vs {f(tau['success'])}")
    return lines, ["normaliser", "1/k contracts trajectories at equal or better success", ours,
                   "holds (paper)", f(fnd["klimit"]["holds"])]


def learning_section(doc, results, out) -> tuple[list[str], list]:
    w = doc["workload"]
    lines = ["## Learning without collapse (`make bench-learning`)", "",
             f"The demo's recipe (`{doc.get('job', 'examples/jobs/demo.yaml')}`: {', '.join(w['tasks'])}, step limit "
             f"{w['step_limit']}, {w['warm_start_steps']} warm-start steps, then {w['steps']} RL steps) on "
             f"{doc['seeds']} seeds from one warm-start. Collapsed: {doc['collapse_rule']}.", ""]
    lines += table(["seed", "steps", "success, first third", "success, last third", "invalid actions, last third",
                    "entropy, first -> last", "min ESS", "max approx KL", "max step KL", "steps backtracked",
                    "steps skipped", "max grad norm", "collapsed"],
                   [[str(r["seed"]), str(r["steps"]), f(r["success_first_third"]), f(r["success_last_third"]),
                     f(r["invalid_last_third"]), f"{f(r['entropy_first_third'])} -> {f(r['entropy_last_third'])}",
                     f(r["min_ess"]), f(r["max_approx_kl"], ".3f"), f(r.get("max_step_kl"), ".4f"),
                     str(r.get("steps_backtracked", "-")), str(r.get("steps_skipped", "-")), f(r["max_grad_norm"]),
                     f(r["collapsed"])]
                    for r in doc["per_seed"]])
    lines += [f"**{doc['collapses']} of {doc['seeds']} seeds collapsed** (target: {doc['target_collapses']}). "
              f"Training success, last third minus first third: {f(doc['success_gain_mean'], '+.2f')} "
              f"(standard error over seeds {f(doc['success_gain_se'])}).", "",
              provenance(doc, "learning", results), ""]
    before = doc.get("before_trust_region")
    if before:
        jumps = ", ".join(f(r["max_approx_kl"], ".2f") for r in before["per_seed"] if r["collapsed"])
        seeds = ", ".join(f"{f(r['success_first_third'])} -> {f(r['success_last_third'])}" for r in before["per_seed"])
        lines += [f"Before the trust region (`max_step_kl`; {before['date'][:10]}, `{before['command']}`): "
                  f"**{before['collapses']} of {before['seeds']} seeds collapsed**, each after a step whose approx "
                  f"KL reached {jumps}; per seed, success first -> last third: {seeds}.", ""]
    lines += plot_line(results, "learning", out)
    return lines, ["learning", f"collapsed seeds of {doc['seeds']} (demo recipe)", str(doc["collapses"]),
                   str(doc["target_collapses"]), f(doc["collapses"] <= doc["target_collapses"])]


def difference_lines(diff: dict | None, label: str = "1/k") -> list[str]:
    if not diff:
        return []
    seeds = diff["per_seed_last_third"]
    return [f"Last third, {label} minus 1/|tau|, per seed: steps per episode "
            f"{', '.join(f(d['steps_per_episode'], '+.2f') for d in seeds)}; success "
            f"{', '.join(f(d['success'], '+.2f') for d in seeds)} (standard error of the pooled success "
            f"difference: {f(diff['success_difference_se'])}).", ""]


def component_sections(results, out) -> tuple[list[str], list[list]]:
    lines, rows = ["## Components", ""], []
    doc = load(results, "envfleet")
    if doc:
        t = doc.get("targets", {})
        lines += ["### envfleet (`make bench-envfleet`)", ""]
        lines += table(["path", *[f"steps/s at {c}" for c in doc["concurrency"]]],
                       [[k, *[f(v.get(str(c))) for c in doc["concurrency"]]] for k, v in doc["steps_per_s"].items()])
        lines += [f"MiB per added browser context: {f(doc['memory']['mib_per_added_context'], '.1f')}.", "",
                  provenance(doc, "envfleet", results), ""] + plot_line(results, "envfleet", out)
        rows += [["envfleet", "steps/s vs raw Playwright at 4", f(doc.get("envfleet_vs_raw_at_4")), ">= 0.90",
                  f(t.get("envfleet_ge_90pct_raw_at_4"))],
                 ["envfleet", "steps/s vs BrowserGym (defaults) at 4", f(doc.get("envfleet_vs_browsergym_defaults_at_4")),
                  ">= 5x", measured(doc.get("envfleet_vs_browsergym_defaults_at_4"), t.get("envfleet_ge_5x_browsergym_at_4"))],
                 ["envfleet", "steps/s vs miniwob-gym at 4 (warm reset)",
                  f(doc.get("envfleet_warm_reset_vs_miniwob_gym_at_4")), "-", "-"],
                 ["envfleet", "MiB per context", f(doc["memory"]["mib_per_added_context"], ".1f"), "<= 80",
                  f(t.get("le_80_mib_per_context"))]]
    doc = load(results, "buffer")
    if doc:
        lines += ["### buffer (`make bench-buffer`)", ""]
        lines += table(["path", "service", "direct Redis", "ratio"],
                       [["PutGroup groups/s", f(doc["put_groups_per_s"]["service"], ".0f"),
                         f(doc["put_groups_per_s"]["direct"], ".0f"), f(doc["put_ratio"])],
                        ["GetBatch groups/s", f(doc["get_groups_per_s"]["service"], ".0f"),
                         f(doc["get_groups_per_s"]["direct"], ".0f"), f(doc["get_ratio"])],
                        ["screenshot puts/s", f(doc["blob_puts_per_s"]["service"], ".0f"),
                         f(doc["blob_puts_per_s"]["direct"], ".0f"), f(doc["blob_ratio"])]])
        lines += [provenance(doc, "buffer", results), ""] + plot_line(results, "buffer", out)
        tg = doc.get("targets", {})
        # Judged on the per-round ratios (both paths back to back in each round), with their standard error.
        put = doc.get("put_ratio_geomean", doc["put_ratio"])
        put_se = f" ± {f(doc['put_ratio_geomean_se'])}" if doc.get("put_ratio_geomean_se") is not None else ""
        rows += [["buffer", "PutGroup vs direct Redis (geometric mean of rounds)", f(put) + put_se,
                  f">= {tg.get('put_ratio', '-')}", f(put >= tg.get("put_ratio", 0))],
                 ["buffer", "GetBatch vs direct Redis", f(doc["get_ratio"]), f">= {tg.get('get_ratio', '-')}",
                  f(doc["get_ratio"] >= tg.get("get_ratio", 0))]]
        if doc.get("put_ratio_replicas") is not None:  # one Python process is CPU-bound; replicas share the load
            rows.append(["buffer", f"PutGroup, {doc['replicas']} replicas, vs direct Redis",
                         f(doc["put_ratio_replicas"]), "-", "-"])
    doc = load(results, "engine")
    if doc:
        lines += ["### embedded engine (`make bench-engine`)", ""]
        lines += table(["mode", "tokens/s", "median latency s", "vs sequential"],
                       [[k, f(v, ".0f"), f(doc["median_latency_s"][k], ".3f"), f(doc["speedup_vs_sequential"][k])]
                        for k, v in doc["tokens_per_s"].items()])
        lines += [provenance(doc, "engine", results), ""] + plot_line(results, "engine", out)
        target = doc.get("target", {}).get("speedup_32_vs_sequential")
        best = max(doc["speedup_vs_sequential"].values())
        rows.append(["engine", "batched vs sequential tokens/s", f(best), f">= {target}" if target else "-",
                     f(best >= target) if target else "-"])
    doc = load(results, "rollout")
    if doc:
        lines += ["### rollout gateway (`make bench-rollout`)", ""]
        lines += table(["mode", "episodes/s", "env steps/s", "vs one group", "browser busy", "engine busy"],
                       [[k, f(v, ".3f"), f(doc["env_steps_per_s"][k]), f(doc["speedup_vs_one_group"][k]),
                         f(doc["browser_busy_fraction"][k]), f(doc["engine_busy_fraction"][k])]
                        for k, v in doc["episodes_per_s"].items()])
        lines += [provenance(doc, "rollout", results), ""] + plot_line(results, "rollout", out)
        best = max(doc["speedup_vs_one_group"].values())
        rows.append(["rollout", "episode pool vs one group at a time", f(best), "-", "-"])
    doc = load(results, "trainer")
    if doc:
        lines += ["### trainer (`make bench-trainer`)", ""]
        lines += table(["mode", "tokens/s", "step s"],
                       [[k, f(v["tokens_per_s"], ".0f"), f(v["step_s"])] for k, v in doc["modes"].items()])
        lines += [provenance(doc, "trainer", results), ""] + plot_line(results, "trainer", out)
        rows.append(["trainer", "train tokens/s, 1 process (CPU)", f(doc["tokens_per_s"], ".0f"), "-", "-"])
    doc = load(results, "weightsync")
    if doc:
        lines += ["### weight sync (`make bench-weightsync`)", ""]
        def ratio(r: dict) -> str:
            return f"{f(r['mean'])} +- {f(r['se'])}"

        sizes = list(doc["broadcast4_over_single"])
        lines += table(["checkpoint", "single load s", "disk fan-out to 4 / single", "broadcast to 4 / single",
                        "broadcast s/GB", "broadcast fallbacks", "target met"],
                       [[k, f(doc["sizes"][k]["variants"]["single"]["median"]), ratio(doc["disk4_over_single"][k]),
                         ratio(doc["broadcast4_over_single"][k]), f(doc["broadcast_s_per_gb"][k]),
                         f(doc["broadcast_fallbacks"][k]), f(doc["target_met"][k])] for k in sizes])
        lines += [f"Target: {doc.get('target', '-')}.", "", provenance(doc, "weightsync", results), ""]
        lines += plot_line(results, "weightsync", out)
        worst = max(r["mean"] for r in doc["broadcast4_over_single"].values())
        rows.append(["weight sync", "broadcast to 4 / single load", f(worst), "<= 1.5", f(worst <= 1.5)])
        rows.append(["weight sync", "disk fan-out to 4 / single load",
                     f(max(r["mean"] for r in doc["disk4_over_single"].values())), "-", "-"])
    return lines, rows


def chaos_section(doc, results, out) -> tuple[list[str], list]:
    if "checks" not in doc:
        return (["## Chaos soak (`make bench-chaos`)", "", f"Failed to run: {doc.get('error', '?')}", "",
                 provenance(doc, "chaos", results), ""], ["chaos", "soak ran", "no", "yes", "no"])
    g, t = doc["groups"], doc["throughput"]
    lines = ["## Chaos soak (`make bench-chaos`)", "",
             f"An asynchronous job (`{doc['job']}`, {doc['max_steps']} steps) on the local stack while one component "
             f"at a time gets SIGKILL about every {f(doc['period_s'], '.0f')} s (seed {doc['seed']}); each comes back as "
             f"the deployment brings it back. {doc['kills_total']} kills. Recovery: from the kill until the killed "
             "part runs again (back) and until a new group is accepted and a new version trained after that.", ""]
    lines += table(["killed", "kills", "back (s, mean)", "recovered (s, mean)", "recovered (s, max)"],
                   [[k, str(r["kills"]), f(r["back_s_mean"], ".1f"), f(r["recover_s_mean"], ".1f"),
                     f(r["recover_s_max"], ".1f")] for k, r in doc["recovery"].items()])
    lines += [f"Groups accepted {g['accepted']}: trained {g['trained']}, rejected as stale {g['rejected_stale']}, "
              f"zero variance {g['rejected_zero_variance']}, dead-lettered {g['dead_letter']}, still pending "
              f"{g['pending']}; **lost {g['lost']}**. Batches trained twice: **{doc['batches_trained_twice']}**. "
              f"Throughput under chaos: {f(t.get('chaos_versions_per_min'))} versions/min"
              + (f" vs {f(t['quiet_versions_per_min'])} quiet (**{f(t.get('relative'))}x**)" if "quiet_versions" in t
                 else "") + ".", ""]
    lines += table(["check", "passed"], [[k, f(v)] for k, v in doc["checks"].items()])
    lines += [provenance(doc, "chaos", results), ""] + plot_line(results, "chaos", out)
    return lines, ["chaos", "groups lost / batches trained twice under SIGKILLs",
                   f"{g['lost']} / {doc['batches_trained_twice']}", "0 / 0", f(doc["passed"])]


def scale_section(doc, results, out) -> tuple[list[str], list]:
    lines = ["## Scale: the real control plane with fake GPUs and browsers (`make bench-scale`)", "",
             "The real redis-server, buffer, weightsync and rollout gateways, started with the api's launcher "
             "flags, against FAKE SGLang endpoints, a FAKE EnvService and the real trainer loop around a step "
             "of stated length (bench/sim_*.py). The stated latencies and where they come from are in "
             "bench/scale.py (`PROFILE`); every rate below is in stated (real) time.", ""]
    rows = []
    r = doc.get("ratio")
    if r:
        i = r["ideal"]
        lines += [f"**Asynchronous vs synchronous, balanced stages.** Batch {r['batch_episodes']} episodes, as many "
                  f"in flight in both modes; the training step takes {r['train_s']:.1f} s, the asynchronous "
                  f"rollout of one batch (the mean episode, {i['episode_mean_s']:.1f} s). A synchronous step waits "
                  f"for its batch's longest episode ({i['batch_longest_episode_s']:.1f} s on average), so the "
                  f"analytical ideal is {i['sync_step_s']:.1f} / {i['async_step_s']:.1f} = "
                  f"**{i['ideal']:.2f}x**.", ""]
        modes = ["sync", *r["by_eta"]]
        lines += table(["mode", "runs", "trained trajectories/h", "s.e.", "s per training step", "of it waiting",
                        "publish s", "groups rejected as stale"],
                       [[m.replace("async_eta", "async, eta "), len(r["runs"][m]), f(r["trajectories_per_hour"][m], ".0f"),
                         f(r["trajectories_per_hour_se"][m], ".0f"),
                         f(statistics.fmean(x["seconds_per_step"] for x in r["runs"][m]), ".1f"),
                         f(statistics.fmean(x["wait_s"] for x in r["runs"][m]), ".1f"),
                         f(statistics.fmean(x["publish_s"] for x in r["runs"][m]), ".2f"),
                         sum(x.get("stale_rejected", 0) for x in r["runs"][m])] for m in modes])
        for v in r["by_eta"].values():
            lines += [f"- eta {v['eta']}: speed-up **{f(v['speedup'])} ± {f(v['speedup_se'])}x**, "
                      f"{f(v['fraction_of_ideal'] * 100, '.0f')}% of the ideal (goals: at least 2.4x and 90%)."]
            rows += [["scale", f"async (eta {v['eta']}) over sync, balanced stages (simulated GPUs)",
                      f"{f(v['speedup'])} ± {f(v['speedup_se'])}x (ideal {i['ideal']:.2f}x, "
                      f"{f(v['fraction_of_ideal'] * 100, '.0f')}%)", ">= 2.4x, >= 90% of ideal",
                      f(v["speedup"] >= 2.4 and v["fraction_of_ideal"] >= 0.9)]]
        lines += ["", "The gate admits a group while (eta + version + 1) x batch - (accepted + running) > 0, and counts a "
                  "group as running until its slowest episode ends: the smaller eta, the less room for a batch to "
                  "wait ready for the trainer. The waiting column is what that costs it.", ""]
    pts = doc.get("concurrency")
    if pts:
        names = sorted({k for p in pts for k in p["core_fraction"]})
        lines += [f"**Concurrent episodes** through {pts[0]['gateways']} gateway(s), {pts[0]['engines']} endpoints, "
                  f"time scale {pts[0]['time_scale']:g}: env steps/s achieved against what the stated latencies "
                  "offer, and the share of one core each process keeps busy.", ""]
        lines += table(["episodes", "offered steps/s", "achieved", "redis cmd/s", "gateway CPU ms/step",
                        *[f"{n} cores" for n in names]],
                       [[p["concurrency"], f(p["offered_env_steps_per_s"], ".1f"), f(p["achieved_fraction"] * 100, ".0f") + "%",
                         f(p["redis_commands_per_s"], ".0f"), f(p["gateway_cpu_ms_per_env_step"], ".1f"),
                         *[f(p["core_fraction"].get(n)) for n in names]] for p in pts])
        kept = [p for p in pts if p["achieved_fraction"] >= 0.8]
        if kept and kept[-1].get("cpu_ms_per_episode"):
            p = kept[-1]
            lines += [f"CPU per episode (its env steps times CPU per step) at {p['concurrency']} episodes, the most "
                      "that kept up: " + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(
                          p["cpu_ms_per_episode"].items(), key=lambda kv: -kv[1])) + " (sim_* are the fakes).", ""]
        sat, c = doc["saturation"], doc["cluster"]
        knee = (f"; there the busiest process, {sat['busiest_at_knee']}, keeps {sat['busiest_cores_at_knee']:.0%} of a "
                f"core busy and all processes together, fakes included, {sat['all_processes_cores_at_knee']:.2f} of "
                f"the machine's {doc['machine']['cpus']} cores; the most it delivered was "
                f"{sat['max_env_steps_per_s']:.0f} env steps/s" if sat.get("busiest_at_knee") else "")
        lines += [f"Throughput falls below 80% of offered at **{f(sat['throughput_below_80pct_at'], 'd', 'none of these')}** "
                  f"concurrent episodes{knee}. A real service keeps 90% of a core busy from: " + ", ".join(
                      f"{k} {f(v, 'd', 'never')}" for k, v in sat["core_90pct_at"].items()) + ".", ""]
        lines += [f"**A {c['episodes']}-episode cluster** ({c['env_steps_per_s']:.0f} env steps/s at the stated "
                  f"latencies), sized from the points that kept up, each replica at most "
                  f"{c['replica_core_budget']:.0%} of a core: " + ", ".join(
                      f"{k} {c[k]['replicas']} ({c[k]['cores']:.2f} cores, {c[k]['cpu_ms_per_env_step']:.2f} ms/step)"
                      for k in ("gateway", "buffer", "weightsync", "redis")) +
                  f"; Redis {c['redis_commands_per_s']:.0f} commands/s.", ""]
        rows += [["scale", f"replicas for {c['episodes']} episodes: gateway / buffer",
                  f"{c['gateway']['replicas']} / {c['buffer']['replicas']}", "-", "-"]]
    eng = doc.get("engines")
    if eng:
        lines += [f"**Endpoints**, {eng[0]['concurrency']} episodes in flight:", ""]
        lines += table(["endpoints", "env steps/s", "achieved", "publish s (per version)", "gateway CPU ms/step",
                        "weightsync cores"],
                       [[p["engines"], f(p["env_steps_per_s"], ".1f"), f(p["achieved_fraction"] * 100, ".0f") + "%",
                         f(p.get("publish_s")), f(p["gateway_cpu_ms_per_env_step"], ".1f"),
                         f(p["core_fraction"].get("weightsync"))] for p in eng])
    if eng and len(eng) > 1:
        lines += [f"weightsync loads a version into at most {doc.get('weightsync_concurrency', 16)} endpoints at a time "
                  "(its --concurrency, which bounds reads of the checkpoint volume), so by disk the publish time "
                  "grows in rounds of that many endpoints; the broadcast transport (docs/weightsync.md) sends once.",
                  ""]
    runs = doc.get("part_runs") or {}
    if len({(v or {}).get("date") for v in runs.values()}) > 1:  # parts run at different times
        lines += [f"*{shown(results)}/scale.json*: " + "; ".join(
            f"{part} {str(v.get('date', '?'))[:16].replace('T', ' ')}, `{v.get('command', '?')}`"
            for part, v in runs.items()), ""]
    else:
        lines += [provenance(doc, "scale", results) + (f" ({doc['note']})" if doc.get("note") else ""), ""]
    lines += plot_line(results, "scale", out)
    return lines, rows


def render(results: pathlib.Path, out: pathlib.Path) -> str:
    sections, summary = [], []
    for name, fn in (("e2e", e2e_section), ("staleness", staleness_section), ("normaliser", normaliser_section),
                     ("learning", learning_section), ("chaos", chaos_section)):
        doc = load(results, name)
        if doc is None:
            sections += [f"## {name}", "", f"Not run: no {name}.json in {shown(results)}.", ""]
            continue
        lines, row = fn(doc, results, out)
        sections += lines
        summary.append(row)
    doc = load(results, "scale")
    if doc is not None:
        lines, rows = scale_section(doc, results, out)
        sections += lines
        summary += rows
    lines, rows = component_sections(results, out)
    sections += lines
    summary += rows
    run = load(results, "run") or {}
    machine = next((d["machine"] for n in ("e2e", "normaliser", "envfleet", "buffer")
                    if (d := load(results, n)) and isinstance(d.get("machine"), dict)), {})
    head = ["# Benchmarks", "",
            f"Generated by `bench/report.py` from `{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}` "
            f"on {time.strftime('%Y-%m-%d')}. Machine: {machine.get('cpus', '?')} cores, "
            f"{machine.get('memory_gib', '?')} GiB, no GPU, {machine.get('platform', '?')}.", "",
            "Commands: `make bench` runs every benchmark below (`--quick`: `make bench-quick`, reduced sizes, "
            "results in bench/results/quick/); `make bench-<name>` runs one. Ratios are measured side by side in "
            "one run, on a shared, noisy 2-core machine; the paper's figures are on GPUs.", ""]
    if run:
        head += [f"Last `make bench{'-quick' if run.get('quick') else ''}`: {run.get('date', '?')}, "
                 f"{run['total_seconds'] / 60:.1f} min in all (" + ", ".join(
                     f"{n} {d['seconds'] / 60:.1f} min" + ("" if d["rc"] == 0 else f" FAILED ({d['rc']})")
                     for n, d in run["benchmarks"].items()) + ").", ""]
    head += ["## Summary", ""] + table(["benchmark", "measure", "ours", "target", "met"], summary)
    return "\n".join(head + sections).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    results, out = pathlib.Path(args.results).resolve(), pathlib.Path(args.out).resolve()
    out.write_text(render(results, out))
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
