"""`make bench` / `make bench-quick`: every benchmark in turn, then BENCHMARKS.md.

Runs the component benchmarks (envfleet, buffer, engine, rollout, trainer,
weight sync), the training ones (end to end with the staleness sweep, the
step normaliser, the demo recipe over seeds), the chaos soak and the scale
simulator one after another, so none competes with another for the cores.
Each prints its own progress; this prints which one runs and how long each
took. ``--quick`` runs each in a reduced size (minutes, numbers only a
smoke check) and writes to bench/results/quick/ instead of bench/results/.

Prints one JSON object on its last line: each benchmark's seconds, exit code
and own last line.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# name -> (full arguments, quick arguments)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "envfleet": (["--rounds", "1"], ["--episodes", "6", "--rounds", "1", "--concurrency", "4", "--skip-peers"]),
    "buffer": ([], ["--groups", "24", "--rounds", "1", "--blobs", "64"]),
    "engine": ([], ["--requests", "16", "--rounds", "1", "--tokens", "32"]),
    "rollout": (["--rounds", "1"], ["--groups", "1", "--pools", "16", "--rounds", "1"]),
    "trainer": ([], ["--steps", "1", "--rounds", "1"]),
    "weightsync": ([], ["--sizes", "20MB", "--repeats", "1", "--engines", "1", "4"]),
    "e2e": (["--etas", "1,2,4,8", "--staleness", "--window", "130"],
            ["--etas", "2", "--staleness", "--window", "20", "--min-steps", "3", "--warm-steps", "4"]),
    "normaliser": ([], ["--seeds", "1", "--steps", "2", "--warm-steps", "4"]),
    "learning": ([], ["--seeds", "1", "--steps", "2"]),
    "chaos": ([], ["--short"]),
    "scale": ([], ["--repeats", "1", "--min-steps", "3", "--time-scale", "10", "--concurrency", "16,64",
                   "--engine-counts", "4", "--sweep-warmup-s", "5", "--sweep-window-s", "10"]),
}


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes, results in bench/results/quick/")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHES))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown benchmarks {unknown}; known: {list(BENCHES)}")
    results = ROOT / "bench" / "results" / ("quick" if args.quick else "")
    results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ASYNCWEBRL_BENCH_RESULTS": str(results)}
    # The training benchmarks share one run directory, so the warm-start runs once.
    shared = pathlib.Path(tempfile.mkdtemp(prefix="bench-training-"))
    if "envfleet" in names and not args.quick:
        subprocess.run(["bash", str(ROOT / "bench/peers/setup.sh")], check=True)
    started = time.monotonic()
    done: dict[str, dict] = {}
    for i, name in enumerate(names, 1):
        argv = [sys.executable, str(ROOT / "bench" / f"{name}.py"), *BENCHES[name][1 if args.quick else 0],
                *(["--run-dir", str(shared)] if name in ("e2e", "normaliser", "learning") else [])]
        print(f"[bench {time.strftime('%H:%M:%S')}] {i}/{len(names)} {name}: {' '.join(argv[1:])}",
              file=sys.stderr, flush=True)
        t = time.monotonic()
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        seconds = time.monotonic() - t
        done[name] = {"seconds": round(seconds, 1), "rc": proc.returncode, "last_line": last_json(proc.stdout)}
        print(f"[bench {time.strftime('%H:%M:%S')}] {name}: exit {proc.returncode} after {seconds:.0f}s "
              f"(total {time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
    if all(d["rc"] == 0 for d in done.values()):
        shutil.rmtree(shared, ignore_errors=True)
    total = time.monotonic() - started
    run = {"quick": args.quick, "total_seconds": round(total, 1), "benchmarks": done,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (results / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    out = results / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md"
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--results", str(results), "--out", str(out)],
                   check=True)
    print(json.dumps({"quick": args.quick, "total_seconds": run["total_seconds"],
                      "failed": [n for n, d in done.items() if d["rc"] != 0],
                      "seconds": {n: d["seconds"] for n, d in done.items()}}))
    return 1 if any(d["rc"] != 0 for d in done.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
