"""An independent KServe v2 client from PyPI works against the server unchanged.

The client is NVIDIA's ``tritonclient[grpc]``, which speaks the KServe v2 gRPC protocol
from its own copy of the contract. It needs protobuf < 7 while quantmesh needs >= 7, so it
lives in its own virtualenv, ``build/kserve-client-venv`` (created on first use, then
reused; ``build/`` is git-ignored), and runs as a subprocess against the test server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.testing import MODEL_NAME, direction_dataset

REPO = Path(__file__).resolve().parents[3]
VENV = REPO / "build" / "kserve-client-venv"
CLIENT_REQUIREMENT = "tritonclient[grpc]==2.73.0"

CLIENT_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

address, model, rows = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), np.float32)
client = grpcclient.InferenceServerClient(url=address)
out = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "server": client.get_server_metadata(as_json=True),
    "metadata": client.get_model_metadata(model, as_json=True),
}
features = grpcclient.InferInput("features", list(rows.shape), "FP32")
features.set_data_from_numpy(rows)
wanted = [grpcclient.InferRequestedOutput("probability_up")]
result = client.infer(model, [features], outputs=wanted, request_id="kserve-1")
out["probabilities"] = result.as_numpy("probability_up").tolist()
out["response"] = result.get_response(as_json=True)
bad = grpcclient.InferInput("features", [1, rows.shape[1]], "FP64")
bad.set_data_from_numpy(rows[:1].astype(np.float64))
try:
    client.infer(model, [bad])
except InferenceServerException as error:
    out["bad_status"], out["bad_message"] = error.status(), error.message()
print(json.dumps(out))
"""


def _client_installed(python: Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", "import tritonclient.grpc"], capture_output=True, timeout=60
    )
    return check.returncode == 0


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The interpreter of the client's own venv, created with tritonclient on first use."""
    python = VENV / "bin" / "python"
    if not _client_installed(python):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, CLIENT_REQUIREMENT], check=True, timeout=540)
    return python


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first run installs the client venv
async def test_tritonclient_grpc_calls_the_server_unchanged(
    kserve_python: Path, inference: ServiceRuntime, model_server: ModelServer
) -> None:
    rows = direction_dataset()[0][:2].astype(np.float32)
    script = [str(kserve_python), "-c", CLIENT_SCRIPT, f"127.0.0.1:{inference.port}"]
    # Not subprocess.run: the server runs on this event loop and must keep answering.
    process = await asyncio.create_subprocess_exec(
        *script,
        MODEL_NAME,
        json.dumps(rows.tolist()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)

    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["server"]["name"] == "quantmesh-inference"
    metadata = seen["metadata"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert metadata["outputs"] == [
        {"name": "probability_up", "datatype": "FP32", "shape": ["-1", "1"]}
    ]
    expected = model_server.predict(MODEL_NAME, rows).probability_up
    assert np.array(seen["probabilities"], np.float32).ravel().tolist() == expected.tolist()
    assert seen["response"]["model_version"] == "1"
    assert seen["response"]["id"] == "kserve-1"
    assert seen["bad_status"] == "StatusCode.INVALID_ARGUMENT"
    assert "FP32" in seen["bad_message"]
