"""The built wheel installs into a fresh venv and runs, with nothing from the checkout."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

_SMOKE = """
import pathlib, quantmesh, quantmesh.datasets, quantmesh.services.marketdata.service as service
from quantmesh.marketdata.v1 import marketdata_pb2_grpc
from quantmesh.inference.v1 import open_inference_pb2
from quantmesh.services.marketdata.config import MarketDataSettings
source = service.build_source(MarketDataSettings())
assert 'site-packages' in quantmesh.services.marketdata.service.__file__, service.__file__
assert 'site-packages' in str(quantmesh.datasets.EURUSD_H1_2017)
assert open_inference_pb2.DESCRIPTOR.package == 'inference'
print('ticks', source.tick_count(['EURUSD']))
"""


def test_wheel_when_installed_in_fresh_venv_imports_and_runs(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("quantmesh-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
    )
    smoke = subprocess.run(
        [str(python), "-c", _SMOKE], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert smoke.returncode == 0, smoke.stderr
    assert smoke.stdout.startswith("ticks ")
    cli = subprocess.run(
        [str(env_dir / "bin" / "quantmesh"), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert cli.returncode == 0
    assert "serve" in cli.stdout
