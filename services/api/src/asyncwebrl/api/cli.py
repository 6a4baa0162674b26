"""``asyncwebrl``: the command-line client.

Brings the local stack (redis-server, envfleet, buffer, weightsync, api; see
``asyncwebrl.api.stack``) up and down, and talks to an api (the local one, or
any other with ``--api``/``--token``; see ``asyncwebrl.api.client``) to submit,
watch, evaluate, report on and cancel jobs.

Only the standard library and PyYAML at start-up: the job schema (pydantic) is
imported by ``submit`` alone, matplotlib by ``report`` alone, and nothing of the services is imported at all,
so every command answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import time

from asyncwebrl.api.client import FINAL, PROG, ApiError, CliError, Client, load_job, metrics_since, quote_part
from asyncwebrl.api.stack import (COMPONENTS, DEFAULT_API_PORT, DEFAULT_RUN_DIR, STACK_FILE, component_alive, down,
                                  load_stack, main_port, up)

# --- the stack --------------------------------------------------------------------


def run_dir_of(args) -> pathlib.Path:
    return pathlib.Path(args.run_dir or os.environ.get("ASYNCWEBRL_RUN_DIR") or DEFAULT_RUN_DIR).resolve()


def stack_table(stack: dict) -> str:
    rows = [("NAME", "PID", "ALIVE", "PORT", "HTTP")]
    comps = stack.get("components", {})
    for name in COMPONENTS:
        c = comps.get(name) or {}
        rows.append((name, str(c.get("pid") or "-"), "yes" if component_alive(c) else "no",
                     str(main_port(name, c) or "-"), str(c.get("http_port") or "-")))
    return table(rows)


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def cmd_up(args) -> int:
    run_dir = run_dir_of(args)
    stack, started = up(run_dir, chromium_path=args.chromium_path, api_port=args.api_port, browsers=args.browsers,
                        contexts=args.contexts, warm_reset=args.warm_reset)
    print(f"the local stack is {'up' if started else 'already up'} ({run_dir})")
    print(stack_table(stack))
    print(f"api: {stack['api_url']}" + (f"  (token in {run_dir / STACK_FILE})" if started else ""))
    return 0


def cmd_down(args) -> int:
    down(run_dir_of(args))
    return 0


# --- job commands -----------------------------------------------------------------


def client_of(args) -> Client:
    """--api/--token, else their environment variables, else the local stack's (from its stack file)."""
    api = args.api or os.environ.get("ASYNCWEBRL_API_URL")
    token = args.token or os.environ.get("ASYNCWEBRL_API_TOKEN")
    if not api or token is None:
        stack = load_stack(run_dir_of(args))
        if stack:
            api = api or stack.get("api_url")
            if token is None and (api or "").rstrip("/") == (stack.get("api_url") or "").rstrip("/"):
                token = stack.get("api_token")
    return Client(api or f"http://127.0.0.1:{DEFAULT_API_PORT}", token or "")


def _fmt(value, spec: str = ".3g", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _process_name(p: dict) -> str:
    if p.get("role") == "engine" and p.get("log"):
        return pathlib.Path(p["log"]).stem  # engine-0, engine-1, ... as the logs route names them
    return str(p.get("role"))


def cmd_status(args) -> int:
    if args.job:
        return _job_status(client_of(args), args.job)
    remote = bool(args.api or os.environ.get("ASYNCWEBRL_API_URL"))
    stack = None if remote else load_stack(run_dir_of(args))
    if stack is not None:
        print(f"stack ({run_dir_of(args)}):")
        print(stack_table(stack))
        print()
    elif not remote:
        print(f"no local stack in {run_dir_of(args)} (`{PROG} up` starts one)")
    client = client_of(args)
    jobs = client.list_jobs(limit=args.limit)
    rows = [("JOB", "STATE", "VERSION", "GROUPS")]
    for job in jobs:
        try:
            detail = client.get(f"/v1/jobs/{quote_part(job['id'])}")
        except ApiError:
            detail = job
        prog = detail.get("progress") or {}
        rows.append((job["id"], detail.get("state", job.get("state")), _fmt(prog.get("version")),
                     _fmt(prog.get("groups_consumed"))))
    print(f"jobs ({client.base}):")
    print(table(rows) if jobs else "  (none)")
    return 0


def _job_status(client: Client, job_id: str) -> int:
    job = client.get(f"/v1/jobs/{quote_part(job_id)}")
    prog = job.get("progress") or {}
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.get("created_ms", 0) / 1000))
    print(f"job       {job['id']}  ({job.get('name')})")
    print(f"state     {job.get('state')}" + (f"  ({job['reason']})" if job.get("reason") else ""))
    print(f"created   {created}")
    print(f"version   {_fmt(prog.get('version'))}")
    print(f"progress  groups accepted {_fmt(prog.get('groups_accepted'))}, consumed "
          f"{_fmt(prog.get('groups_consumed'))}, steps consumed {_fmt(prog.get('steps_consumed'))}")
    rejected = prog.get("rejected") or {}
    if rejected:
        print("rejected  " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))
    procs = job.get("processes") or []
    if procs:
        rows = [("PROCESS", "PID", "RUNNING", "RESTARTS", "EXIT", "LOG")]
        rows += [(_process_name(p), _fmt(p.get("pid")), "yes" if p.get("running") else "no",
                  _fmt(p.get("restarts")), _fmt(p.get("exit_code")), p.get("log") or "-") for p in procs]
        print()
        print(table(rows))
    return 0


def cmd_submit(args) -> int:
    doc = load_job(args.file, args.set or [])
    client = client_of(args)
    try:
        job = client.request("POST", "/v1/jobs", doc)
    except ApiError as exc:
        errors = exc.body.get("errors") or []
        if exc.status != 422 or not errors:
            raise
        for e in errors:
            print(f"error: {e.get('field')}: {e.get('message')}", file=sys.stderr)
        raise CliError(f"the api refused {args.file}: {len(errors)} invalid field(s)", 2) from None
    print(job["id"])
    print(f"submitted {job['id']} ({job.get('state')}); `{PROG} watch {job['id']}` follows it", file=sys.stderr)
    return 0


# Off-policy health that warns of a collapse before success falls: (field, label, bad when, threshold).
HEALTH_WARNINGS = (
    ("ess", "behaviour ESS", "below", 0.5),            # rollouts far off the trained policy
    ("clip_fraction", "clipped", "above", 0.2),        # updates pushing past the trust region
    ("behav_gap", "engine/trainer logprob gap", "above", 0.05),  # the engine serves other weights or numerics
    ("invalid_action_rate", "invalid actions", "above", 0.5),    # the tool-call format breaking down
)


def health_warnings(row: dict) -> list[str]:
    out = []
    for field, label, side, threshold in HEALTH_WARNINGS:
        value = row.get(field)
        if isinstance(value, (int, float)) and (value < threshold if side == "below" else value > threshold):
            out.append(f"{label} {value:.2f} {side} {threshold:g}")
    return out


def progress_line(job: dict, row: dict | None) -> str:
    prog = job.get("progress") or {}
    version = max(int(prog.get("version") or 0), int((row or {}).get("version") or 0))
    row = row or {}
    parts = [time.strftime("%H:%M:%S"), f"v{version}",
             f"success {_fmt(row.get('success'), '.2f')}",
             f"traj/h {_fmt(row.get('trajectories_per_hour'), '.0f')}",
             f"env steps/s {_fmt(row.get('env_steps_per_s'), '.2f')}",
             f"staleness {_fmt(row.get('staleness_mean'), '.2f')}"]
    if row.get("step") is not None:
        parts.insert(2, f"step {row['step']}")
    parts.append(f"groups {_fmt(prog.get('groups_consumed'))}")
    if row.get("ess") is not None:
        parts += [f"ess {_fmt(row.get('ess'), '.2f')}", f"clip {_fmt(row.get('clip_fraction'), '.3f')}",
                  f"entropy {_fmt(row.get('entropy'), '.2f')}", f"invalid {_fmt(row.get('invalid_action_rate'), '.2f')}"]
    parts.append(str(job.get("state")))
    warnings = health_warnings(row)
    if warnings:
        parts.append("WARNING: " + "; ".join(warnings))
    return "  ".join(parts)


def cmd_watch(args) -> int:
    client = client_of(args)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    since, last_row, metrics_ok, shown = 0, None, True, None
    while True:
        job = client.get(f"/v1/jobs/{quote_part(args.job)}")
        if metrics_ok:
            got = metrics_since(client, args.job, since)
            if got is None:
                metrics_ok = False
                print("note: this api serves no metrics series; showing the job's progress only", file=sys.stderr)
            else:
                rows, since = got
                if rows:
                    last_row = rows[-1]
        line = progress_line(job, last_row)
        key = line.split("  ", 1)[1]
        if key != shown:
            print(line, flush=True)
            shown = key
        version = int((job.get("progress") or {}).get("version") or 0)
        state = job.get("state")
        if args.until_version is not None and version >= args.until_version:
            print(f"{args.job} reached version {version}")
            return 0
        if state in FINAL:
            reason = f": {job['reason']}" if job.get("reason") else ""
            print(f"{args.job} {state}{reason}")
            return 0 if state == "succeeded" else 1
        if deadline is not None and time.monotonic() >= deadline:
            target = f" before version {args.until_version}" if args.until_version is not None else ""
            print(f"error: timed out after {args.timeout:g}s{target} (version {version}, {state})", file=sys.stderr)
            return 1
        time.sleep(max(0.1, args.interval if deadline is None else min(args.interval, deadline - time.monotonic())))


def cmd_logs(args) -> int:
    client = client_of(args)
    tail_bytes = min(max(args.tail, 1) * 400, 1024 * 1024)
    text = client.request("GET", f"/v1/jobs/{quote_part(args.job)}/logs/{quote_part(args.role)}"
                                 f"?tail_bytes={tail_bytes}",
                          accept_json=False)
    lines = text.splitlines()
    if len(lines) > args.tail:
        lines = lines[-args.tail:]
    sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
    return 0


def _eval_table(ev: dict) -> str:
    # The figures at the top level (the contract), or under "result" (as this api also writes them).
    ev = {**ev, **(ev.get("result") or {})}
    rows = [("DIFFICULTY", "SUCCESS", "EPISODES")]
    for diff, d in sorted((ev.get("by_difficulty") or {}).items(),
                          key=lambda kv: ("easy", "medium", "hard").index(kv[0])
                          if kv[0] in ("easy", "medium", "hard") else 9):
        rows.append((diff, _fmt(d.get("success"), ".3f"), _fmt(d.get("episodes"))))
    # A task set's evaluation: its test tasks apart from its out-of-distribution ones.
    for split, d in sorted((ev.get("by_split") or {}).items()):
        rows.append((f"split {split}", _fmt(d.get("success"), ".3f"), _fmt(d.get("episodes"))))
    rows.append(("all", _fmt(ev.get("success"), ".3f"), _fmt(ev.get("episodes"))))
    return table(rows)


def cmd_eval(args) -> int:
    client = client_of(args)
    ev = client.request("POST", f"/v1/jobs/{quote_part(args.job)}/evaluate",
                        {"version": args.version, "groups": args.groups, "base": args.base})
    print(f"evaluation {ev['id']} of {args.job} at version {_fmt(ev.get('version'))}: {ev.get('state')}")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while ev.get("state") == "running":
        if deadline is not None and time.monotonic() >= deadline:
            print(f"error: evaluation {ev['id']} still running after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(args.interval)
        ev = client.get(f"/v1/jobs/{quote_part(args.job)}/evaluations/{quote_part(ev['id'])}")
    print(f"evaluation {ev['id']} {ev.get('state')}" + (f": {ev['reason']}" if ev.get("reason") else ""))
    if ev.get("state") != "succeeded":
        return 1
    print(_eval_table(ev))
    mean_steps = (ev.get("result") or ev).get("mean_steps")
    if mean_steps is not None:
        print(f"mean steps {_fmt(mean_steps, '.2f')}")
    return 0


def cmd_report(args) -> int:
    from asyncwebrl.api.report import job_report

    client = client_of(args)
    out_dir = pathlib.Path(args.out or f"report-{args.job}")
    out, text = job_report(client, args.job, out_dir, title="asyncwebrl report")
    print(text)
    print(f"written: {out_dir / 'report.md'}, {out_dir / 'report.json'}, {out_dir / 'learning_curve.png'}")
    return 0 if out["evaluations"] else 1


def cmd_cancel(args) -> int:
    client = client_of(args)
    client.timeout = max(client.timeout, 180.0)  # the api answers once the job's processes have stopped
    job = client.delete_job(args.job, purge=args.purge)
    if job.get("state") == "deleted":
        d = job.get("deleted") or {}
        print(f"{job['id']} deleted: {d.get('groups', 0)} groups, {d.get('blobs', 0)} screenshots "
              f"({d.get('blob_bytes', 0)} bytes), {d.get('keys', 0)} keys")
        return 0
    print(f"{job['id']} {job.get('state')}" + (f" ({job['reason']})" if job.get("reason") else ""))
    return 0


def cmd_viewer(args) -> int:
    client = client_of(args)
    job = client.get(f"/v1/jobs/{quote_part(args.job)}")  # an unknown job is an error, not a dead link
    fragment = f"#token={quote_part(client.token)}" if client.token else ""
    print(f"{client.base}/viewer/{quote_part(job['id'])}{fragment}")
    return 0


# --- task sets -------------------------------------------------------------------


def _taskset_name(file: str) -> str:
    """A task set name from a file name: lower-case, runs of other characters as '-'."""
    import re

    stem = pathlib.Path(file).name.split(".")[0].lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:64] or "tasks"


def _counts(counts: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in counts.items() if v) or "-"


def cmd_tasksets_add(args) -> int:
    client = client_of(args)
    name = args.name or _taskset_name(args.file)
    if args.remote:
        meta = client.add_taskset(name, path=args.file, replace=args.replace)
    else:
        try:
            data = sys.stdin.buffer.read() if args.file == "-" else pathlib.Path(args.file).read_bytes()
        except OSError as exc:
            raise CliError(f"{args.file}: {exc.strerror or exc}", 2) from None
        try:
            meta = client.add_taskset(name, data, replace=args.replace)
        except ApiError as exc:
            for e in (exc.body.get("errors") or [])[1:] if exc.status == 422 else []:
                print(f"error: {e.get('field')}: {e.get('message')}", file=sys.stderr)
            raise
    print(f"{meta['name']}: {meta['tasks']} tasks (levels {_counts(meta.get('by_level', {}))}; "
          f"splits {_counts(meta.get('by_split', {}))}) sha256 {meta.get('sha256', '')[:12]}")
    return 0


def cmd_tasksets_list(args) -> int:
    sets = client_of(args).list_tasksets(limit=args.limit)
    rows = [("NAME", "TASKS", "TRAIN", "TEST", "TEST_OOD", "CREATED")]
    for m in sets:
        split = m.get("by_split") or {}
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("created_ms", 0) / 1000))
        rows.append((m["name"], m.get("tasks"), split.get("train", 0), split.get("test", 0),
                     split.get("test_ood", 0), created))
    print(table(rows) if sets else "(no task sets)")
    return 0


def cmd_tasksets_show(args) -> int:
    client = client_of(args)
    page = client.get_taskset(args.name, limit=min(args.tasks, 1000))
    meta = page["taskset"]
    print(f"taskset   {meta['name']}  ({meta.get('source') or '-'})")
    print(f"tasks     {meta['tasks']}")
    print(f"levels    {_counts(meta.get('by_level', {}))}")
    print(f"splits    {_counts(meta.get('by_split', {}))}")
    print(f"sha256    {meta.get('sha256')}")
    if page.get("tasks"):
        rows = [("ID", "LEVEL", "SPLIT", "WEBSITE", "INSTRUCTION")]
        rows += [(t["id"], t["level"], t["split"], t["website"], t["instruction"][:60]) for t in page["tasks"]]
        print()
        print(table(rows))
    return 0


def cmd_tasksets_delete(args) -> int:
    out = client_of(args).delete_taskset(args.name)
    print(f"{out['name']} {out.get('state', 'deleted')}")
    return 0


# --- the parser ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    glob = argparse.ArgumentParser(add_help=False)
    g = glob.add_argument_group("global options")
    g.add_argument("--api", default=argparse.SUPPRESS, metavar="URL",
                   help="api base URL [env ASYNCWEBRL_API_URL] (default: the local stack's, from <run-dir>/stack.json)")
    g.add_argument("--token", default=argparse.SUPPRESS,
                   help="api bearer token [env ASYNCWEBRL_API_TOKEN] (default: the local stack's)")
    g.add_argument("--run-dir", default=argparse.SUPPRESS, metavar="DIR",
                   help=f"the local stack's directory [env ASYNCWEBRL_RUN_DIR] (default: {DEFAULT_RUN_DIR})")

    parser = argparse.ArgumentParser(
        prog=PROG, parents=[glob],
        description="The asyncwebrl command-line client: the local stack, and jobs on an api.",
        epilog=f"Start with `{PROG} up`, then `{PROG} submit examples/jobs/demo.yaml` and `{PROG} watch JOB`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[glob], help=help_text, description=description or help_text)
        p.set_defaults(func=func)
        return p

    p = command("up", cmd_up, "start the local stack (redis, envfleet, buffer, weightsync, api) in the background",
                "Start the local stack as detached background processes, each logging to <run-dir>/logs/<name>.log; "
                "tokens, ports and pids are kept in <run-dir>/stack.json (mode 0600). Flags left out keep what the "
                "stack last ran with.")
    p.add_argument("--chromium-path", help="Chromium executable for envfleet [env ASYNCWEBRL_CHROMIUM_PATH] "
                                           "(default: /usr/bin/chromium)")
    p.add_argument("--api-port", type=int, help=f"REST api port; 0 picks a free one (default: {DEFAULT_API_PORT})")
    p.add_argument("--browsers", type=int, help="Chromium processes in envfleet (default: 1)")
    p.add_argument("--contexts", type=int, help="browser contexts per Chromium (default: 16)")
    p.add_argument("--warm-reset", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse released browser contexts (in-page reset; default: off)")

    command("down", cmd_down, "stop the local stack (api first, redis last)",
            "SIGTERM every process of the local stack (api first, redis last), SIGKILL what is left after the "
            "grace period. Tokens, ports, jobs and Redis data stay for the next `up`.")

    p = command("status", cmd_status, "the stack and its jobs, or one job's detail")
    p.add_argument("job", nargs="?", metavar="JOB", help="a job id: its state, progress and processes")
    p.add_argument("--limit", type=int, default=20, help="most jobs listed, newest first (default: 20)")

    p = command("submit", cmd_submit, "validate a YAML job document and submit it; prints the job id",
                "Validate the job document locally (exit 2 naming each bad field), then POST it. Prints the job id "
                "alone on stdout.")
    p.add_argument("file", metavar="JOB.yaml", help="job document (YAML or JSON; - reads stdin)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help="override a field, e.g. --set algorithm.max_steps=20 (repeatable; VALUE is YAML)")

    p = command("watch", cmd_watch, "follow a job's progress, one line per update",
                "One line per update (version, success, trajectories/hour, env steps/s, staleness, state) until the "
                "job is final, --until-version is reached or --timeout passes. Exit 0 when the job succeeded or "
                "reached the version; 1 when it failed, was cancelled or the time ran out.")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default: 2)")
    p.add_argument("--until-version", type=int, metavar="N", help="stop (exit 0) once the job reaches version N")
    p.add_argument("--timeout", type=float, metavar="S", help="give up (exit 1) after S seconds")

    p = command("logs", cmd_logs, "the tail of one of a job's process logs")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--role", default="trainer", help="trainer, rollout, engine-0, engine-1, ... (default: trainer)")
    p.add_argument("--tail", type=int, default=100, metavar="N", help="last N lines (default: 100)")

    p = command("eval", cmd_eval, "evaluate a job's policy on its held-out episodes")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--version", type=int, help="weight version (default: the latest; 0: after the warm-start)")
    p.add_argument("--base", action="store_true", help="the model the job started from, before any warm-start "
                                                       "(--version is then ignored)")
    p.add_argument("--groups", type=int, help="groups of the test split (default: the job's tasks.eval_groups)")
    p.add_argument("--wait", action="store_true", help="wait until it finishes and print success per difficulty")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait (default: 2)")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up (exit 1) after S seconds")

    p = command("report", cmd_report, "write a job's report: held-out success before and after training, by "
                "difficulty and split, and its learning curve",
                "From the job's finished evaluations (the newest of each: the untrained model, `eval --base`; the "
                "warm-started policy, version 0; the highest version) and its metrics: report.md, report.json and "
                "learning_curve.png in --out. Exit 1 when the job has no finished evaluation.")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--out", metavar="DIR", help="where the report goes (default: ./report-JOB)")

    p = command("cancel", cmd_cancel, "cancel a job (its processes stop, its data stays)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--purge", action="store_true", help="also delete the job and its data in the buffer "
                   "(groups, screenshots, counters); the job is gone afterwards. Files under the run dir stay.")

    p = command("delete", cmd_cancel, "delete a job and its data (as cancel --purge)")
    p.add_argument("job", metavar="JOB")
    p.set_defaults(purge=True)

    p = command("viewer", cmd_viewer, "print the URL of a job's trajectory viewer")
    p.add_argument("job", metavar="JOB")

    p = command("tasksets", None, "register, list, show and delete task sets (WebGym JSONL files)",
                "Task sets: WebGym JSONL task files registered with the api by name; a job names one in "
                "tasks.taskset.")
    ts = p.add_subparsers(dest="tasksets_command", metavar="ACTION", required=True)

    def action(name: str, func, help_text: str) -> argparse.ArgumentParser:
        a = ts.add_parser(name, parents=[glob], help=help_text, description=help_text)
        a.set_defaults(func=func)
        return a

    a = action("add", cmd_tasksets_add, "validate and register a WebGym JSONL file as a task set")
    a.add_argument("file", metavar="FILE", help="the JSONL file (- reads stdin); with --remote, a path under the "
                                                "api's --taskset-roots")
    a.add_argument("--name", help="the set's name (default: the file's name, lower-case)")
    a.add_argument("--replace", action="store_true", help="replace a set of that name")
    a.add_argument("--remote", action="store_true", help="FILE is a path the api reads under its --taskset-roots")
    a = action("list", cmd_tasksets_list, "the task sets, by name")
    a.add_argument("--limit", type=int, default=1000, help="most sets listed (default: 1000)")
    a = action("show", cmd_tasksets_show, "one task set: its counts and its first tasks")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--tasks", type=int, default=20, metavar="N", help="tasks listed (default: 20; 0: none)")
    a = action("delete", cmd_tasksets_delete, "delete a task set (refused while a running job names it)")
    a.add_argument("name", metavar="NAME")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("api", "token", "run_dir"):
        if not hasattr(args, name):
            setattr(args, name, None)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `asyncwebrl status | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
