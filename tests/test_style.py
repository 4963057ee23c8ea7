"""Ruff, configured in pyproject.toml, is part of the tests."""

from __future__ import annotations

import subprocess
import sys

from tuner.project import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_lint():
    done = ruff("check", ".")
    assert done.returncode == 0, done.stdout


def test_ruff_format():
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, done.stdout
