"""Episodes kept for people to look at: the trajectory viewer's store.

The buffer deletes a group once it is trained on, so what a viewer shows is
copied out here: the trainer keeps a few episodes of every batch, an evaluation
keeps all of its own. An archive is a directory (on the checkpoint volume in a
cluster, so the api reads what the trainer wrote)::

    <root>/episodes/<seq>-<episode id>.json   one episode: task, outcome, steps
    <root>/blobs/<sha256>                    each screenshot once, by content

Files are written to a temporary name and renamed, so a reader never sees half
an episode. Only the archive's own writer prunes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import time

from asyncwebrl.v1 import buffer_pb2

EPISODE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_TEXT = 4000  # characters of model output kept per step


@dataclasses.dataclass(frozen=True)
class Summary:
    """One line of the listing."""

    id: str
    task: str
    difficulty: str
    seed: int
    success: bool
    reward: float
    length: int
    finish_reason: str
    version: int
    unix: float

    def view(self) -> dict:
        return dataclasses.asdict(self)


def _action(raw: str) -> dict:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {"action": "unparsed", "raw": raw[:500]}
    return value if isinstance(value, dict) else {"action": "unparsed", "raw": raw[:500]}


def episode_document(group: buffer_pb2.Group, episode: buffer_pb2.EpisodeRecord, version: int) -> dict:
    """The JSON kept for one episode. A step's screenshot is the last image of its prompt,
    the page the action was taken on. ``version``: the policy's, where no token says (demonstrations);
    otherwise the oldest version that wrote a token of the episode."""
    version = min((v for s in episode.steps for v in s.versions), default=version)
    steps = []
    for j, s in enumerate(episode.steps):
        shot = s.screenshots[-1] if s.screenshots else None
        steps.append({
            "index": j,
            "text": s.text[:MAX_TEXT],
            "action": _action(s.action),
            "invalid": s.invalid_action,
            "screenshot": ({"sha256": shot.sha256, "width": shot.width, "height": shot.height, "mime": shot.mime}
                           if shot else None),
            "versions": sorted(set(s.versions)),
            # The reward arrives with the episode's end.
            "reward": episode.reward if j == len(episode.steps) - 1 else 0.0,
        })
    return {
        "id": episode.episode_id, "group_id": group.group_id, "task": group.task, "difficulty": group.difficulty,
        "seed": group.seed, "success": episode.success, "reward": episode.reward, "raw_reward": episode.raw_reward,
        "length": episode.length,
        "finish_reason": episode.finish_reason, "judged": episode.judged, "judge_text": episode.judge_text[:MAX_TEXT],
        "judge_latency_s": round(episode.judge_latency_s, 3),
        "version": version, "unix": time.time(), "steps": steps,
    }


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class EpisodeArchive:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = pathlib.Path(root)
        self.episodes = self.root / "episodes"
        self.blobs = self.root / "blobs"

    def add(self, group: buffer_pb2.Group, episode: buffer_pb2.EpisodeRecord, blobs: dict[str, bytes],
            version: int) -> str | None:
        """Keep one episode and its screenshots (those in ``blobs``); returns its id, None if it has none."""
        if not EPISODE_ID.match(episode.episode_id):
            return None
        self.episodes.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        doc = episode_document(group, episode, version)
        for step in doc["steps"]:
            shot = step["screenshot"]
            if shot and SHA256.match(shot["sha256"]) and shot["sha256"] in blobs:
                path = self.blobs / shot["sha256"]
                if not path.exists():
                    _write_atomic(path, blobs[shot["sha256"]])
        # A sequence number first: names sort in the order episodes were kept.
        name = f"{time.time_ns():020d}-{episode.episode_id}.json"
        _write_atomic(self.episodes / name, json.dumps(doc).encode())
        return episode.episode_id

    def _files(self) -> list[pathlib.Path]:
        if not self.episodes.is_dir():
            return []
        return sorted((p for p in self.episodes.iterdir() if p.suffix == ".json" and not p.name.startswith(".")),
                      reverse=True)

    def list(self, offset: int = 0, limit: int = 50) -> tuple[list[Summary], int]:
        """Newest first; returns the page and the total count."""
        files = self._files()
        out = []
        for path in files[offset:offset + limit]:
            doc = self._read(path)
            if doc is not None:
                out.append(Summary(**{f.name: doc.get(f.name) for f in dataclasses.fields(Summary)}))
        return out, len(files)

    def get(self, episode_id: str) -> dict | None:
        if not EPISODE_ID.match(episode_id) or not self.episodes.is_dir():
            return None
        for path in self.episodes.glob(f"*-{episode_id}.json"):
            # The glob also matches an id that merely ends with "-<episode_id>": the sequence has no "-".
            if path.name.partition("-")[2] == f"{episode_id}.json":
                return self._read(path)
        return None

    def blob(self, sha256: str) -> bytes | None:
        if not SHA256.match(sha256):
            return None
        path = self.blobs / sha256
        return path.read_bytes() if path.is_file() else None

    def prune(self, keep: int) -> int:
        """Keep the newest ``keep`` episodes; drop screenshots no kept episode shows. Returns episodes removed."""
        files = self._files()
        if len(files) <= keep:
            return 0
        for path in files[keep:]:
            path.unlink(missing_ok=True)
        shown = {s["screenshot"]["sha256"] for p in files[:keep] if (d := self._read(p))
                 for s in d["steps"] if s.get("screenshot")}
        for blob in self.blobs.iterdir():
            if blob.name not in shown and not blob.name.startswith("."):
                blob.unlink(missing_ok=True)
        return len(files) - keep

    @staticmethod
    def _read(path: pathlib.Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
