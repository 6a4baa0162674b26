"""Train, test and out-of-distribution splits of the built-in tasks, and how results are reported.

- train and test use the same templates and are disjoint by seed: a seed is a test
  seed when ``seed % TEST_EVERY == 0``;
- ood holds whole templates out (``Template.ood``), on test seeds, so neither train
  nor test ever shows them.

``success_by_difficulty`` gives the table the WebGym OOD results use: success per
difficulty (easy, medium, hard) and over all, with counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from asyncwebrl.common.tasks import DIFFICULTIES, SPLITS, TEST_EVERY, is_test_seed

__all__ = ["DIFFICULTIES", "SPLITS", "TEST_EVERY", "seeds", "split_of", "success_by_difficulty", "tasks_for"]


def split_of(held_out: bool, seed: int) -> str:
    if held_out:
        return "ood"
    return "test" if is_test_seed(seed) else "train"


def seeds(split: str, count: int, start: int = 0) -> list[int]:
    """The first ``count`` seeds from ``start`` that belong to ``split`` (ood uses test seeds)."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    if count < 0 or start < 0:
        raise ValueError("count/start: must be non-negative")
    out, seed = [], start
    want_test = split in ("test", "ood")
    while len(out) < count:
        if is_test_seed(seed) == want_test:
            out.append(seed)
        seed += 1
    return out


def tasks_for(split: str, templates: Iterable, per_template: int, start: int = 0) -> list[tuple[str, int]]:
    """(template name, seed) pairs of ``split``: train/test over the in-distribution templates, ood over the rest."""
    chosen = [t for t in templates if bool(getattr(t, "ood", False)) == (split == "ood")]
    return [(t.name, s) for t in chosen for s in seeds(split, per_template, start)]


def success_by_difficulty(results: Iterable[tuple[str, bool]]) -> dict[str, dict[str, float | int]]:
    """``results`` are (difficulty, success); returns {difficulty|"all": {"success", "episodes"}}."""
    counts = {d: [0, 0] for d in (*DIFFICULTIES, "all")}
    for difficulty, success in results:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty: unknown {difficulty!r}")
        for key in (difficulty, "all"):
            counts[key][0] += bool(success)
            counts[key][1] += 1
    return {k: {"success": round(w / n, 4) if n else 0.0, "episodes": n} for k, (w, n) in counts.items()}
