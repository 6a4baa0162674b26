"""Published weight versions on checkpoint storage: layout, manifest, verification.

The trainer writes version v as a complete Hugging Face checkpoint directory
``<root>/v<v:08d>/`` (``config.json``, ``model.safetensors``, tokenizer and
image-processor files) with a ``manifest.json`` naming the version, each
file's sha256 and size, and the tensor names. It writes into a temporary
directory and renames it into place, so a reader never sees half a version.
Whoever loads a version (weightsync, an engine, a restarted trainer) verifies
the manifest first; a mismatch is an error naming the file, never a partial
load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import time

MANIFEST = "manifest.json"
FORMAT = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_VERSION_DIR = re.compile(r"^v(\d{8,})$")


class CheckpointError(ValueError):
    """A version directory that is missing, incomplete or does not match its manifest."""


@dataclasses.dataclass
class Manifest:
    version: int
    files: dict[str, dict]          # name -> {"sha256", "bytes"}
    tensors: list[str]
    step: int = 0
    batch_id: str = ""              # the buffer batch trained into this version
    created_unix: float = 0.0
    format: int = FORMAT

    @property
    def checksum(self) -> str:
        """One hash over every file's hash: what Publish carries and compares."""
        text = "\n".join(f"{name}:{entry['sha256']}" for name, entry in sorted(self.files.items()))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(int(e["bytes"]) for e in self.files.values())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self) | {"checksum": self.checksum}, indent=1, sort_keys=True)


def version_dir(root: str | pathlib.Path, version: int) -> pathlib.Path:
    return pathlib.Path(root) / f"v{version:08d}"


def file_sha256(path: pathlib.Path, chunk: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _tensor_names(files: list[pathlib.Path]) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for f in files:
        with safe_open(str(f), framework="np") as handle:
            names.extend(handle.keys())
    return sorted(names)


def write_manifest(directory: str | pathlib.Path, version: int, step: int = 0, batch_id: str = "") -> Manifest:
    """Hash every file of ``directory`` and write its manifest."""
    directory = pathlib.Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    weights = [p for p in files if p.suffix == ".safetensors"]
    if not weights or not (directory / "config.json").is_file():
        raise CheckpointError(f"model_path: {directory} needs config.json and *.safetensors")
    manifest = Manifest(
        version=version,
        files={p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in files},
        tensors=_tensor_names(weights),
        step=step,
        batch_id=batch_id,
        created_unix=time.time(),
    )
    (directory / MANIFEST).write_text(manifest.to_json())
    return manifest


def read_manifest(directory: str | pathlib.Path, verify: bool = True) -> Manifest:
    """The manifest of a version directory; with ``verify`` every file is re-hashed."""
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"manifest: {path} is missing")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"manifest: {path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(path.read_text())
        manifest = Manifest(
            version=int(raw["version"]), files=dict(raw["files"]), tensors=list(raw["tensors"]),
            step=int(raw.get("step", 0)), batch_id=str(raw.get("batch_id", "")),
            created_unix=float(raw.get("created_unix", 0.0)), format=int(raw.get("format", FORMAT)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"manifest: {path} is not a valid manifest ({exc})") from None
    if manifest.format != FORMAT:
        raise CheckpointError(f"manifest.format: {manifest.format} is not supported (expected {FORMAT})")
    if manifest.version < 0:
        raise CheckpointError("manifest.version: must be >= 0")
    if "checksum" in raw and raw["checksum"] != manifest.checksum:
        raise CheckpointError("manifest.checksum: does not match the file hashes it lists")
    for name, entry in manifest.files.items():
        if "/" in name or name in ("", ".", ".."):
            raise CheckpointError(f"manifest.files: {name!r} is not a plain file name")
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"manifest.files: {name} is missing from {directory}")
        if file.stat().st_size != int(entry["bytes"]):
            raise CheckpointError(f"manifest.files: {name} has {file.stat().st_size} bytes, the manifest {entry['bytes']}")
        if verify and file_sha256(file) != entry["sha256"]:
            raise CheckpointError(f"manifest.files: {name} does not match its sha256")
    return manifest


def list_versions(root: str | pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """Version directories under ``root`` (complete ones only: temporaries are skipped), oldest first."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _VERSION_DIR.match(p.name)
        if m and p.is_dir() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_version(root: str | pathlib.Path, verify: bool = True) -> tuple[Manifest, pathlib.Path] | None:
    """The newest version whose files match its manifest (a corrupt newer one is skipped)."""
    for _, path in reversed(list_versions(root)):
        try:
            return read_manifest(path, verify=verify), path
        except CheckpointError:
            continue
    return None


def commit_dir(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Make ``tmp`` appear as ``final`` in one rename (after syncing its files)."""
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def prune(root: str | pathlib.Path, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` versions; returns the versions removed."""
    versions = list_versions(root)
    removed = []
    for version, path in versions[: max(0, len(versions) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(version)
    return removed


def write_version_from(source: str | pathlib.Path, root: str | pathlib.Path, version: int,
                       transform=None) -> tuple[Manifest, pathlib.Path]:
    """Publish a Hugging Face checkpoint directory as ``<root>/v<version>/`` with its manifest.

    ``transform(name, tensor) -> tensor`` rewrites the weights on the way (tests
    and benchmarks make distinct versions of one model this way).
    """
    from safetensors.torch import load_file, save_file

    source, root = pathlib.Path(source), pathlib.Path(root)
    final = version_dir(root, version)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in source.iterdir():
        if not f.is_file() or f.name == MANIFEST:
            continue
        if f.suffix == ".safetensors" and transform is not None:
            tensors = load_file(f)
            save_file({k: transform(k, v).contiguous() for k, v in tensors.items()}, tmp / f.name,
                      metadata={"format": "pt"})
        else:
            shutil.copy2(f, tmp / f.name)
    manifest = write_manifest(tmp, version)
    commit_dir(tmp, final)
    return manifest, final
