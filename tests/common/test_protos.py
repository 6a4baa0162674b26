"""The committed stubs must match what `make protos` generates from protos/."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_stubs_are_fresh(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    assert protos, "no .proto files"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos"), f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        check=True,
        cwd=ROOT,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated
    stale = [
        str(rel) for rel in generated
        if not (ROOT / "libs/common/src" / rel).exists()
        or (ROOT / "libs/common/src" / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"stale stubs, run `make protos`: {stale}"
