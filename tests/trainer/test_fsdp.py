"""FSDP2 with the gloo backend: two CPU processes under torchrun train the same batch to
the same loss, gradient norm and weights as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from asyncwebrl.common.weights import version_dir

WORKER = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")


def _run(prefix: list[str], out) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([*prefix, WORKER, str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_gloo_processes_match_one(tmp_path):
    one = _run([sys.executable], tmp_path / "one")
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
               tmp_path / "two")
    assert two["world"] == 2 and one["world"] == 1
    # Tolerance: float32 sums in another order (per rank, then all-reduced): 1e-5 relative.
    assert abs(two["loss"] - one["loss"]) <= 1e-5 * max(1.0, abs(one["loss"])), (one, two)
    assert abs(two["grad_norm"] - one["grad_norm"]) <= 1e-4 * one["grad_norm"], (one, two)
    assert two["micro_batches"] >= one["micro_batches"] and one["loss"] != 0
    a = load_file(str(version_dir(tmp_path / "one", 1) / "model.safetensors"))
    b = load_file(str(version_dir(tmp_path / "two", 1) / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-5, f"weights after the step differ by {worst}"
