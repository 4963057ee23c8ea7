"""The GPU images' locks, proven without a GPU or a registry: uv resolves each lock again
for its image's platform and Python against the package index (wheels only, but for the
pure-Python sources the lock names), the pure-Python sources build into pure wheels, each
lock holds what pyproject.toml asks for that environment, and the locked torch's CUDA is
the base image's. The last test feeds the same checks the images as they were before the
locks (a CUDA 12.8 base, flash-attn from source, DeepSpeed 0.18.2) and sees each fail.

These tests reach the package index (pip and uv, as CI can); nothing else."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import LOCAL_WHEELS
from tuner.cli import main
from tuner.containers import load_targets
from tuner.locks import (
    PURE_PYTHON_SOURCES,
    TORCH_WHEELS_ENV,
    cuda_problems,
    locks,
    read_pins,
    resolution_problems,
    unmet,
)

LOCKS = locks()
A100_TRAIN = next(lk for lk in LOCKS if (lk.target, lk.environment) == ("a100", "train"))
# The a100 training lock's wheels unpack to 6.5 GB; uv extracts each beside the target
# first, and the largest (torch, cuDNN, cuBLAS) are 1 GB and more each.
INSTALL_NEEDS_GIB = 12


def test_every_target_has_a_lock_per_environment():
    with_locks = {name for name, t in load_targets().items() if t.get("environments")}
    assert with_locks == set(load_targets()) == {"t4", "a100", "4090x8", "dgx-spark", "cpu"}
    for lock in LOCKS:
        assert lock.path.is_file(), f"{lock.path} is missing: run `just lock {lock.target}`"
    assert {lk.platform for lk in LOCKS if lk.target == "dgx-spark"} == {"linux/arm64"}


@pytest.mark.parametrize("lock", LOCKS, ids=lambda lk: f"{lk.target}.{lk.environment}")
def test_each_lock_holds_what_pyproject_asks_and_a_torch_of_the_base_images_cuda(lock):
    pins = read_pins(lock.path.read_text())
    assert unmet(lock, pins) == []
    assert pins["torch"] == (lock.torch or "2.13.0")
    options = [line for line in lock.path.read_text().splitlines() if line.startswith("--")]
    assert options[0] == "--only-binary :all:" and len(options) == 1 + len(PURE_PYTHON_SOURCES)
    assert cuda_problems(load_targets()[lock.target], pins) == []


def test_each_lock_resolves_again_to_itself_with_wheels_for_its_platform(monkeypatch):
    """One uv resolution per distinct lock (t4's and a100's are the same file, as are
    the amd64 inference and bigcode environments), all at once: each is mostly waiting
    on the index. The cpu locks' torch comes from this machine's folder of wheels where
    it has one (PyTorch's own page, the default, is out of this machine's reach)."""
    if LOCAL_WHEELS.is_dir():
        monkeypatch.setenv(TORCH_WHEELS_ENV, str(LOCAL_WHEELS))
    distinct = {(lk.uv_platform, lk.path.read_text(), lk.extras): lk for lk in LOCKS}
    with ThreadPoolExecutor(max_workers=len(distinct)) as pool:
        found = pool.map(
            lambda lk: (lk.path.name, resolution_problems(lk, lk.path.read_text())),
            distinct.values(),
        )
        assert {name: problems for name, problems in found if problems} == {}


def test_the_pure_python_sources_build_into_pure_wheels(tmp_path):
    """The packages with no wheel on the index build without a compiler: DeepSpeed
    without DS_BUILD_OPS compiles no op."""
    pins: dict[str, str] = {}
    for lock in LOCKS:
        pins |= read_pins(lock.path.read_text())
    sources = [f"{name}=={pins[name]}" for name in PURE_PYTHON_SOURCES if name in pins]
    assert len(sources) == len(PURE_PYTHON_SOURCES), "a named source is in no lock: drop it"
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-binary"]
    done = subprocess.run(
        [*command, ":all:", "--wheel-dir", str(tmp_path), *sources],
        capture_output=True,
        text=True,
        env=os.environ | {"DS_BUILD_OPS": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wheels = sorted(tmp_path.glob("*.whl"))
    assert len(wheels) == len(sources)
    for wheel in wheels:
        assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
        with zipfile.ZipFile(wheel) as archive:
            assert not [n for n in archive.namelist() if n.endswith((".so", ".pyd"))]


def test_pip_keeps_the_pure_python_exceptions_of_a_locks_wheel_rule(tmp_path):
    """pip, which installs the locks in the images, applies a requirements file's options
    in order: `--only-binary :all:` after the `--no-binary` lines (as uv writes them)
    would clear the exceptions and refuse the pure-Python sources."""
    options = [line for line in A100_TRAIN.path.read_text().splitlines() if line.startswith("--")]

    def pip_accepts(lines: list[str]) -> subprocess.CompletedProcess:
        probe = tmp_path / "probe.txt"
        probe.write_text("\n".join([*lines, "langdetect==1.0.9", "six==1.17.0"]) + "\n")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet"]
        command += ["--ignore-installed", "--disable-pip-version-check", "-r", str(probe)]
        return subprocess.run(command, capture_output=True, text=True)

    done = pip_accepts(options)
    assert done.returncode == 0, done.stderr[-2000:]
    refused = pip_accepts([*options[1:], options[0]])
    assert refused.returncode != 0 and "langdetect==1.0.9" in refused.stderr


def test_the_images_as_they_were_fail_these_checks(tmp_path):
    # A CUDA 12.8 base under the index's torch 2.13.0 (a CUDA 13 build).
    pins = read_pins(A100_TRAIN.path.read_text())
    [problem] = cuda_problems({"base": "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04"}, pins)
    assert "has CUDA 12" in problem and "CUDA 13 build" in problem
    # flash-attn 2.8.3.post2: a source distribution only.
    lock = A100_TRAIN.path.read_text() + "flash-attn==2.8.3.post2\n"
    [problem] = resolution_problems(A100_TRAIN, lock)
    assert "flash-attn" in problem and "Wheels are required" in problem
    # DeepSpeed 0.18.2 beside Axolotl 0.19's deepspeed extra (>= 0.18.6, < 0.19).
    multi_gpu = next(lk for lk in LOCKS if (lk.target, lk.environment) == ("4090x8", "train"))
    text = multi_gpu.path.read_text()
    old = text.replace(f"deepspeed=={read_pins(text)['deepspeed']}\n", "deepspeed==0.18.2\n")
    [problem] = resolution_problems(multi_gpu, old)
    assert "deepspeed" in problem and "unsatisfiable" in problem


def test_lock_names_the_targets_that_have_locks(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["lock", "a10"])
    assert stopped.value.code == 2
    assert "the targets with locks are t4, a100, 4090x8, dgx-spark, cpu" in capsys.readouterr().err


def test_a_missing_lock_is_reported_with_the_command_that_makes_it(monkeypatch, tmp_path):
    import tuner.locks

    monkeypatch.setattr(tuner.locks, "LOCKS", Path(tmp_path))
    monkeypatch.setattr(tuner.locks, "ROOT", Path(tmp_path))
    [problem] = tuner.locks.check(A100_TRAIN).problems
    assert "a100.train.txt is missing: run `just lock a100`" in problem


@pytest.mark.slow
def test_the_a100_training_environment_installs_for_its_platform_with_cuda_13_throughout():
    """The a100 image's training lock installed for real into a scratch folder, as the
    image's pip would, for linux x86_64 and Python 3.12: about 6.5 GB from the index in
    under a minute here, removed at the end. Then what the installed files say: torch is a
    CUDA 13.0 build whose CUDA libraries all come with the lock, bitsandbytes carries its
    CUDA 13.0 library, and xformers' is a CUDA 12 build (why no overlay uses it)."""
    wheels = [
        line
        for line in A100_TRAIN.path.read_text().splitlines()
        if not line.startswith("--no-binary")
        and read_pins(line).keys().isdisjoint(PURE_PYTHON_SOURCES)
    ]
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    if free < INSTALL_NEEDS_GIB:
        pytest.skip(
            f"needs about {INSTALL_NEEDS_GIB} GiB free in {tempfile.gettempdir()} to unpack "
            f"the lock's 6.5 GB of wheels; {free:.0f} GiB free"
        )
    with tempfile.TemporaryDirectory() as scratch:
        lock, target = Path(scratch) / "wheels.txt", Path(scratch) / "site-packages"
        lock.write_text("\n".join(wheels) + "\n")
        command = [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--no-cache"]
        command += ["--target", str(target), "--no-deps", "--no-python-downloads", "-r", str(lock)]
        command += ["--python-platform", A100_TRAIN.uv_platform, "--python-version", "3.12"]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        version = (target / "torch" / "version.py").read_text()
        assert (
            "__version__ = '2.13.0+cu130'" in version and "cuda: Optional[str] = '13.0'" in version
        )
        needed = subprocess.run(
            ["readelf", "-d", str(target / "torch" / "lib" / "libtorch_cuda.so")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cuda_libraries = re.findall(r"\[(lib(?:cu|nv|nccl)\w*\.so[.\d]*)\]", needed)
        assert "libcudart.so.13" in cuda_libraries
        shipped = {path.name for path in (target / "nvidia").rglob("*.so*")}
        assert set(cuda_libraries) <= shipped, set(cuda_libraries) - shipped
        assert (target / "bitsandbytes" / "libbitsandbytes_cuda130.so").is_file()
        xformers = json.loads((target / "xformers" / "cpp_lib.json").read_text())
        assert xformers["version"]["cuda"] // 100 == 12
    assert "xformers" not in load_targets()["a100"]["attention"]
