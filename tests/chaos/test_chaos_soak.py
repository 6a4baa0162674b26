"""The chaos soak's short form (``bench/chaos.py --short``): an asynchronous job on the local stack while
Chromium, envfleet, the buffer, redis-server, the engine, the gateway, the trainer and weightsync are each
SIGKILLed once; nothing may be lost (see bench/chaos.py for every check). ``make bench-chaos`` is the full
form (10 minutes of kills, and a quiet run to compare throughput with)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_a_short_chaos_soak_loses_nothing(tmp_path, chromium_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--seed", "24",
                           "--run-dir", str(tmp_path / "stack"), "--out-dir", str(out)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=870)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no result line; stderr:\n{proc.stderr[-4000:]}"
    print(lines[-1])  # the soak's JSON line (pytest -s or -rP shows it)
    summary = json.loads(lines[-1])
    doc = json.loads((out / "chaos.json").read_text())
    failed = {k: v for k, v in doc.get("checks", {}).items() if not v}
    assert "error" not in doc, f"{doc['error']}\n{proc.stderr[-4000:]}"
    assert not failed, (f"failed checks {sorted(failed)}; groups {doc['groups']}; batches {doc['batches']}; "
                        f"versions {doc['versions']}; leases {doc['leases']}; blobs {doc['blobs']}; aof {doc['aof']}")
    assert proc.returncode == 0 and summary["passed"]
    assert summary["groups_lost"] == 0 and summary["batches_trained_twice"] == 0
    assert set(summary["kills"]) == {"chromium", "envfleet", "buffer", "redis", "engine", "gateway", "trainer",
                                     "weightsync"}
    assert (out / "chaos.png").is_file()
