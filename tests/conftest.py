"""Shared helpers: run the project's command line as a user would, in this environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tuner.project import ROOT

# Where this machine's pip finds the CPU wheel of torch (PyTorch's own index, which
# serves it elsewhere, is out of reach here).
LOCAL_WHEELS = Path("/opt/wheels")
# This machine's CA bundle, which pip inside an image build or a Debian root needs to
# reach the package index as it does here.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the slow tests keep between runs: image storages, the Debian root.
TEST_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-tuner-tests"

# The suite's two workers often run two vLLM engines at once. vLLM's CPU build binds
# each engine's OpenMP threads to the same CPUs by default (OMP_PROC_BIND), so on two
# cores two engines pinned to one CPU slowed each other by more than ten times (a
# demo evaluation stalled for minutes at engine start). Unbound, the OS shares both
# cores between them. Every subprocess of the tests inherits it.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
# One OpenMP thread per process: two workers already fill two cores. With torch's
# default of one thread per core, a training beside a vLLM engine ran its steps 13
# times slower than alone (42 s against 3.2 s), its threads waiting at every barrier
# for the one the other process had taken.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_tuner(
    *args: str, runs: Path | None = None, timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m tuner ARGS` from the repository root, output captured; in this
    process's environment unless given another."""
    env = dict(os.environ if env is None else env)
    if runs is not None:
        env["TUNER_RUNS"] = str(runs)
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def copy_working_tree(target: Path) -> None:
    """A clone of this repository with the working tree's current files: what a fresh
    clone of it would be once committed (build outputs, venvs and runs stay behind)."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@dataclass(frozen=True)
class Ran:
    """A command's exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """`tuner.cli.main(ARGS)` in this process, as `python -m tuner ARGS` runs it, without
    the interpreter's start and the imports a subprocess pays again."""
    from tuner.cli import main

    def invoke(*args: str) -> Ran:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as stopped:
            code = stopped.code if isinstance(stopped.code, int) else 1
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway runs folder, so tests never touch the user's runs/."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("TUNER_RUNS", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight two-layer model of SmolLM2's architecture with its real
    tokenizer, for tests of plumbing: it runs in milliseconds, and what it writes is
    noise."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuner.models import ensure_embedded_model

    source = ensure_embedded_model()
    config = AutoConfig.from_pretrained(source)
    config.update(
        {
            "num_hidden_layers": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
        }
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end modules first, the demo's and the pipeline's leading, so that the
    suite's two workers start on its longest chains and the rest fills in around them
    (pytest-xdist hands out modules in the order of their first test)."""
    first = ("test_demo.py", "test_pipeline.py")
    items.sort(
        key=lambda item: (
            item.path.name not in first,
            item.get_closest_marker("slow") is None,
        )
    )
