"""The command line (`python -m service`, service/__main__.py), as a real process: its options and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.live_service import service_env


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=tmp_path, env=service_env(**env),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_help_names_the_options(tmp_path: Path) -> None:
    done = run(tmp_path, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--host" in done.stdout and "--port" in done.stdout


def test_invalid_settings_exit_2_naming_the_setting(tmp_path: Path) -> None:
    done = run(tmp_path, "--port", "0", IMDN_MAX_SCALE="0")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: invalid settings" in done.stderr and "max_scale" in done.stderr
