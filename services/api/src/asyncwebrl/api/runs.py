"""What a job leaves in its run directory, read for the api: the trainer's per-step
metrics (``checkpoints/metrics.jsonl``, the warm-start's under ``warm/``) and the
processes' logs (``logs/<role>.log``)."""

from __future__ import annotations

import json
import os
import pathlib
import re

ROLE = re.compile(r"^[a-z0-9-]{1,40}$")
# The per-step fields a time series carries (the JSONL line has more: histograms, raw lengths).
SERIES_FIELDS = (
    "step", "version", "unix", "groups", "episodes", "env_steps", "success", "reward", "raw_reward",
    "success_by_difficulty", "reward_by_difficulty", "length_success", "length_failure", "tokens_per_step",
    "loss", "grad_norm", "clip_fraction", "dual_clip_fraction", "cap_fraction", "approx_kl", "kl_ref",
    "step_kl", "backtracks", "step_skipped",  # the trust region (max_step_kl)
    # Off-policy health (see the trainer's metrics): what warns of a collapse.
    "ess", "behav_gap", "adv_pos_mass", "adv_neg_mass", "entropy", "invalid_action_rate",
    "lr", "train_tokens_per_s", "trajectories_per_hour", "env_steps_per_s", "zero_variance_dropped", "rejected",
    "seconds",
)


def metrics_path(job_dir: pathlib.Path, phase: str) -> pathlib.Path:
    return job_dir / ("warm" if phase == "warm_start" else "checkpoints") / "metrics.jsonl"


def series(path: pathlib.Path, since_step: int, limit: int) -> tuple[list[dict], int]:
    """Rows with step > ``since_step``, at most ``limit``; and the step to ask after next time."""
    rows: list[dict] = []
    last = since_step
    if not path.is_file():
        return rows, last
    with open(path, errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash mid-write
            step = entry.get("step")
            if not isinstance(step, int) or step <= since_step:
                continue
            row = {k: entry[k] for k in SERIES_FIELDS if k in entry}
            hist = entry.get("staleness") or {}
            total = sum(hist.values())
            row["staleness_mean"] = sum(int(k) * v for k, v in hist.items()) / total if total else 0.0
            rows.append(row)
            last = step
            if len(rows) >= limit:
                break
    return rows, last


def log_tail(job_dir: pathlib.Path, role: str, tail_bytes: int) -> bytes | None:
    if not ROLE.match(role):
        return None
    path = job_dir / "logs" / f"{role}.log"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - tail_bytes))
        return f.read(tail_bytes)
