"""`make serve` alone gets the fast CPU backend: ONNX Runtime comes with a plain install and is picked by default."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.live_service import REPO, run_service


def make_dry_run(target: str) -> list[str]:
    """The commands `make <target>` would run, without running them."""
    # --no-print-directory: under `make test` this is a sub-make, which would announce its directory.
    result = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=REPO, capture_output=True,
                            text=True, check=True)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def test_make_serve_installs_onnx_runtime_without_extras() -> None:
    commands = make_dry_run("serve")
    installs = [c for c in commands if " pip install " in c]
    assert installs and all(re.search(r"-e \.(\s|$)", c) for c in installs), commands  # the package, no extras
    assert commands[-1].split()[1:4] == ["-m", "service", "--host"], commands
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}
    assert {"onnxruntime", "onnx"} <= names, "ONNX Runtime must come with a plain install"


def test_default_settings_serve_with_onnx_runtime(tmp_path: Path) -> None:
    """Started as `make serve` starts it (no IMDN_BACKEND, the project's weights), /v1/models names ONNX Runtime."""
    with run_service(tmp_path, weights=None) as service:
        body = httpx.get(f"{service.url}/v1/models", timeout=15).json()
    assert body["backend"] == "onnxruntime", body
    assert body["devices"] == ["cpu"]
