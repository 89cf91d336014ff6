"""The breaking-change gate: buf passes on today's contracts and fails on a breaking edit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = str(Path(sys.executable).parent / "buf")


def _buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BUF, *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_buf_lint_and_breaking_pass_on_committed_contracts() -> None:
    assert _buf("lint", cwd=ROOT).returncode == 0
    result = _buf("breaking", "--against", "proto/baseline.binpb", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_when_field_removed_fails(tmp_path: Path) -> None:
    workspace = tmp_path / "repo"
    shutil.copytree(ROOT / "proto", workspace / "proto")
    shutil.copy(ROOT / "buf.yaml", workspace / "buf.yaml")
    contract = workspace / "proto/quantmesh/marketdata/v1/marketdata.proto"
    text = contract.read_text()
    assert "  uint64 from_seq = 2;\n" in text
    contract.write_text(text.replace("  uint64 from_seq = 2;\n", ""))
    result = _buf("breaking", "--against", "proto/baseline.binpb", cwd=workspace)
    assert result.returncode != 0
    assert "from_seq" in result.stdout + result.stderr
