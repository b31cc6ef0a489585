"""scripts/gpu_check.sh fits its 8-minute budget and measures what issue 16 asks (it runs only on a GPU)."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.conftest import REPO

SCRIPT = REPO / "scripts/gpu_check.sh"
BUDGET_S = 8 * 60


def test_gpu_check_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_gpu_check_steps_are_bounded_within_8_minutes():
    text = SCRIPT.read_text()
    commands = [line.strip() for line in text.splitlines() if "bench/" in line and not line.strip().startswith("#")]
    assert commands and all(c.startswith("timeout ") for c in commands), commands
    assert sum(int(re.match(r"timeout (\d+)", c).group(1)) for c in commands) <= BUDGET_S - 20  # type: ignore[union-attr]


def test_gpu_check_measures_1_and_4_workers_at_1_4_16_clients():
    text = SCRIPT.read_text()
    assert re.search(r"bench/service\.py workers --workers 1 4 --clients 1 4 16\b", text)
    assert "--side 256" in text
