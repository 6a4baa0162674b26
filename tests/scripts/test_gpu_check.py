"""scripts/gpu_check.py --cpu-smoke: the GPU check's code, run on a tiny model on the CPU, in an
environment shaped like the GPU machine's (no redis-py, pydantic, gRPC health, web servers;
protobuf treated as absent, since the generated stubs need a newer runtime than the machine may have).

The GPU run itself needs a GPU; this keeps the script from rotting where there is none."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"

# What the GPU machine lacks (redis, pydantic, grpc_health, fastapi, starlette, uvicorn), what it
# may hold only in a version the stubs refuse (protobuf), and what the script has no use for
# (grpc, aiohttp): each import of these fails as if the package were not installed.
BLOCKED = ("redis", "pydantic", "pydantic_core", "grpc_health", "grpc_reflection", "fastapi", "starlette",
           "uvicorn", "google.protobuf", "grpc", "aiohttp", "playwright", "kubernetes")

SITECUSTOMIZE = textwrap.dedent('''
    import importlib.abc, os, sys

    BLOCKED = {blocked!r}
    LOG = os.environ.get("GPU_CHECK_BLOCK_LOG")

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            for b in BLOCKED:
                if name == b or name.startswith(b + "."):
                    if LOG:
                        with open(LOG, "a") as f:
                            f.write(f"{{os.getpid()}} {{name}}\\n")
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not on the GPU machine)",
                                              name=name)
            return None

    sys.meta_path.insert(0, _Blocker())
''')


def test_cpu_smoke_runs_the_gpu_path_without_the_missing_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED))
    block_log = tmp_path / "blocked.txt"
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "GPU_CHECK_BLOCK_LOG": str(block_log), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert wall < 240

    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result  # the JSON is also the last line of stdout
    assert result["mode"] == "cpu-smoke" and result["complete"] and result["ok"], result["errors"]
    assert result["errors"] == []

    # The block was in force in both processes, and protobuf's absence was handled, not hidden.
    attempts = block_log.read_text().split("\n") if block_log.exists() else []
    assert any(line.endswith(" google.protobuf") or " google.protobuf." in line for line in attempts)
    assert len({line.split()[0] for line in attempts if line}) >= 2, attempts  # trainer and engine process
    assert result["imports"]["placeholders"] and result["engine"]["placeholders"]
    for name in ("grpc", "redis", "pydantic", "aiohttp", "google.protobuf"):
        assert name in result["imports"]["not_imported"]
    assert "asyncwebrl.trainer.step" in result["imports"]["asyncwebrl_modules"]
    assert "asyncwebrl.engine.core" in result["engine"]["asyncwebrl_modules"]

    versions = result["machine"]["versions"]
    assert versions["torch"] and versions["transformers"]
    assert result["machine"]["gpu"] is None  # CPU: no GPU fields made up

    train = result["train"]
    assert train["setup"]["sharding"].startswith("FSDP2")
    assert train["batch"]["rows"] >= 4 and train["batch"]["images"] > 0
    assert train["batch"]["image_tokens_per_screenshot"] > 0
    assert len(train["steps"]) >= 1 and train["step_s"] > 0
    assert train["tokens_per_s"] > 0
    assert train["tokens_per_s"] == round(train["batch"]["tokens_per_step"] / train["step_s"], 1)
    assert train["flops"]["per_step"] > 0 and train["flops"]["achieved_tflops"] >= 0
    assert train["mfu"] is None and "CPU" in train["flops"]["peak_source"]
    assert train["profile"]["top_ops"], train["profile"]

    engine = result["engine"]
    assert sorted(engine["levels"], key=int) == ["1", "2", "4"]
    for c, level in engine["levels"].items():
        assert level["in_flight"] == int(c)
        assert level["generated_tokens"] == level["requests"] * engine["new_tokens_per_request"]
        assert level["tokens_per_s"] > 0 and 0 < level["ttft_median_s"] <= level["e2e_median_s"]
        assert level["versions"] == ["0"]

    transfer = result["transfer"]
    assert transfer["bytes"] > 0 and transfer["bytes"] == transfer["checkpoint_bytes"]
    assert transfer["total_s"] > 0 and transfer["gb_per_s"] > 0
    assert "disk" in transfer["path"] and "does not exist yet" in transfer["path"]
    assert transfer["weights"]["differ_from_trainer"] == 0
    assert transfer["weights"]["changed_by_update"] > 0
    assert transfer["probe_logprob_max_abs_diff"] < 1e-3
    assert transfer["engine_version_after"] == ["1"]
    assert all(result["checks"].values()), result["checks"]
