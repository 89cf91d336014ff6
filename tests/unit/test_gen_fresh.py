"""gen/ is exactly what scripts/gen_protos.py writes from proto/ today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_gen_when_regenerated_matches_committed_tree(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(fresh)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "gen"
    assert _tree(fresh) == _tree(committed), "gen/ has missing or extra files: run `make gen`"
    stale = [
        name
        for name in sorted(_tree(fresh))
        if not filecmp.cmp(fresh / name, committed / name, shallow=False)
    ]
    assert not stale, f"gen/ is stale ({stale[:5]}): run `make gen` and commit the result"
