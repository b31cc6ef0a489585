"""Every runtime pin resolves for the Python each image ships, without Docker.

The CUDA image once used a base whose Python (3.10) none of the pinned versions support, and nothing
noticed because no image is built in CI. This asks pip to resolve what each Dockerfile installs, for
that image's Python and platform (`pip install --dry-run --python-version X.Y --only-binary=:all:`).
It needs the package index (PyPI), as `make install` does; torch comes from its own index, as in the
Dockerfiles, and is checked only where that index is reachable.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")

DOCKERFILES = ("docker/Dockerfile.cpu", "docker/Dockerfile.cuda")
# Both images are linux/amd64 on Debian bookworm (glibc 2.36): every manylinux tag up to 2.36 installs there
# (pip does not expand a given tag to the older ones itself).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + ["manylinux2014_x86_64"]


def image_python(dockerfile: str) -> str:
    """X.Y of the official python image the Dockerfile builds on."""
    text = (REPO / dockerfile).read_text()
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert image, f"{dockerfile}: base the image on an official python:X.Y image (ARG PYTHON_IMAGE) so its " \
                  "Python version is known; distribution images (e.g. ubuntu22.04: 3.10) are too old for the pins"
    version = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?(?:-.*)?", image.group(1))
    assert version, image.group(1)
    return f"{version.group(1)}.{version.group(2)}"


def extras(dockerfile: str) -> list[str]:
    found = re.search(r'"\.\[([\w,]+)\]"', (REPO / dockerfile).read_text())
    return found.group(1).split(",") if found else []


def runtime_requirements(dockerfile: str) -> list[str]:
    """What `pip install -c constraints.txt ".[extras]"` in the Dockerfile pulls in, torch aside."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras(dockerfile):
        wanted += project["optional-dependencies"][extra]
    return [r for r in wanted if not re.match(r"torch\b", r)]


def torch_index(dockerfile: str) -> str:
    found = re.search(r"(https://download\.pytorch\.org/whl/[\w.]+)", (REPO / dockerfile).read_text())
    assert found, f"{dockerfile}: no PyTorch index"
    return found.group(1)


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


def dry_run(python: str, requirements: list[str], tmp_path: Path, *index: str) -> list[tuple[str, str]]:
    """pip's resolution for `python` on the image's platform -> [(name, version)]; fails with pip's reasons."""
    report = tmp_path / "report.json"
    abi = "cp" + python.replace(".", "")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--target", str(tmp_path / "never-written"),
               "--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
               *(arg for tag in PLATFORMS for arg in ("--platform", tag)), "--only-binary=:all:",
               "-c", str(REPO / "constraints.txt"),
               "--report", str(report), *index, *requirements]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    errors = "\n".join(line for line in done.stderr.splitlines() if "WARNING: Location" not in line)
    assert done.returncode == 0, f"the pins do not resolve for Python {python}:\n{errors[-3000:]}"
    installed = json.loads(report.read_text())["install"]
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in installed]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runtime_pins_resolve_for_the_image_python(dockerfile: str, tmp_path: Path) -> None:
    if not reachable("https://pypi.org/simple/pip/"):
        pytest.skip("PyPI unreachable: the resolution needs the package index")
    python = image_python(dockerfile)
    requirements = runtime_requirements(dockerfile)
    resolved = dict(dry_run(python, requirements, tmp_path))
    # Resolved at the tested versions, not merely some version.
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)", (REPO / "constraints.txt").read_text(), re.M))
    for requirement in requirements:
        name = re.match(r"[\w.-]+", requirement).group(0)  # type: ignore[union-attr]
        key = next((k for k in resolved if re.sub(r"[-_.]+", "-", k).lower() == name.lower()), None)
        assert key is not None, f"{name} missing from the resolution"
        assert name in pins, f"{name} has no exact pin in constraints.txt"
        assert resolved[key] == pins[name], (name, resolved[key], pins[name])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_torch_pin_resolves_from_the_image_index(dockerfile: str, tmp_path: Path) -> None:
    index = torch_index(dockerfile)
    if not reachable(index + "/torch/"):
        pytest.skip(f"{index} unreachable from here: torch's wheel for the image's Python is not checked")
    pin = re.search(r'"(torch==[^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin
    resolved = dict(dry_run(image_python(dockerfile), [pin.group(1)], tmp_path, "--index-url", index))
    assert resolved["torch"].split("+")[0] == pin.group(1).split("==")[1]
