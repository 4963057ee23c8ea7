"""The cpu image, really built and run: buildah builds containers/cpu.Dockerfile on a
Debian base made here with debootstrap (no registry can be reached), and podman runs
`just --list` and one training step of the instruction recipe inside it.

The first build takes about 10 minutes, most of it pip installing the locks; a rebuild
after a change to the code, about 20 seconds (the whole test: 80 seconds). The image
storage outlives the test run (under ~/.cache/llm-tuner-tests/), one per install layer:
the Dockerfile installs the locks before it copies the project, so after a change to
the code a rebuild reuses that layer and the base image. A change to the locks or the
Dockerfile starts a new storage and removes the old one. .ci/run installs buildah,
podman, runc and debootstrap first. The storage driver is overlay (the kernel's, as
root); even so a first build's disk use peaks at about 30 GB while it commits the 8 GB
install layer (the container's files, the layer, its blob). Where the tools are missing,
or the disk has too little room, the test says so and is skipped."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CA_BUNDLE, LOCAL_WHEELS, TEST_CACHE
from tuner.project import ROOT

pytestmark = pytest.mark.slow

TOOLS = ("buildah", "podman", "runc", "debootstrap")
# Measured peak of a first build: 30 GB (df every 10 s during a run); the rest is margin
# for the run. A rebuild over a kept install layer writes the project's layer only.
NEEDED_GIB = 40
NEEDED_GIB_CACHED = 5
DOCKERFILE = ROOT / "containers" / "cpu.Dockerfile"
LOCKS = [ROOT / "containers" / "locks" / f"cpu.{env}.txt" for env in ("train", "infer")]


def install_layer_digest() -> str:
    """What the install layer depends on: the Dockerfile and the locks."""
    digest = hashlib.sha256()
    for path in (DOCKERFILE, *LOCKS):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run(command: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install {' '.join(TOOLS)})")
    root = TEST_CACHE / f"images-{install_layer_digest()}"
    for stale in TEST_CACHE.glob("images-*"):
        if stale != root:
            remove_storage(stale)
    root.mkdir(parents=True, exist_ok=True)
    # overlay refuses a run root path longer than 50 characters, pytest's are longer; and
    # podman's database remembers its storage's run root, so it is the same every run.
    run_root = Path(tempfile.gettempdir()) / f"tuner-run-{install_layer_digest()}"
    run_root.mkdir(exist_ok=True)
    options = ["--root", str(root / "storage"), "--runroot", str(run_root)]
    options += ["--storage-driver", "overlay"]
    if run(["podman", *options, "images"], 120).returncode != 0:
        remove_storage(root)  # a storage podman cannot open again starts over
        root.mkdir(parents=True)
    free = shutil.disk_usage(root).free / 2**30
    needed = NEEDED_GIB_CACHED if (root / "built").is_file() else NEEDED_GIB
    if free < needed:
        pytest.skip(
            f"needs about {needed} GiB of free disk (committing the 8 GB install layer "
            f"peaks at about 30 GB); {free:.0f} GiB free"
        )
    yield options
    # The layers stay for the next run; the overlay driver's mounts and the run root go.
    subprocess.run(
        ["umount", "--recursive", str(root / "storage" / "overlay")], capture_output=True
    )
    shutil.rmtree(run_root, ignore_errors=True)


def remove_storage(root: Path) -> None:
    """An image storage of other locks: its images, its mounts, then its files."""
    storage = ["--root", str(root / "storage"), "--storage-driver", "overlay"]
    subprocess.run(["podman", *storage, "rmi", "--all", "--force"], capture_output=True)
    subprocess.run(
        ["umount", "--recursive", str(root / "storage" / "overlay")], capture_output=True
    )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cpu_image(storage, tmp_path_factory: pytest.TempPathFactory) -> str:
    kept = run(["podman", *storage, "image", "exists", "localhost/debian:bookworm"], 60)
    if kept.returncode != 0:
        base = tmp_path_factory.mktemp("debian")
        rootfs = base / "rootfs"
        done = run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)], 900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        tarball = base / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        imported = ["podman", *storage, "import", str(tarball), "localhost/debian:bookworm"]
        done = run(imported, 600)
        assert done.returncode == 0, done.stderr
        shutil.rmtree(base)
    build = ["buildah", *storage, "build", "--layers", "--pull=never", "--isolation", "chroot"]
    build += ["--format", "docker", "-f", "containers/cpu.Dockerfile", "-t", "llm-tuner:cpu"]
    build += ["--build-arg", "BASE=localhost/debian:bookworm"]
    if LOCAL_WHEELS.is_dir():
        wheels = str(LOCAL_WHEELS)
        build += ["--build-arg", f"TORCH_WHEELS={wheels}", "--volume", f"{wheels}:{wheels}:ro"]
    if CA_BUNDLE.is_file():
        build += ["--build-arg", "PIP_CERT=/etc/host-ca.crt"]
        build += ["--volume", f"{CA_BUNDLE}:/etc/host-ca.crt:ro"]
    done = subprocess.run(
        [*build, str(ROOT)], capture_output=True, text=True, timeout=2400, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (TEST_CACHE / f"images-{install_layer_digest()}" / "built").touch()
    return "localhost/llm-tuner:cpu"


def test_the_cpu_image_lists_the_recipes_and_trains_a_step(storage, cpu_image):
    # runc, and explicit ulimits: crun and podman's default ulimits fail on this
    # machine's hybrid cgroups.
    command = ["podman", *storage, "--runtime", "runc", "run", "--rm"]
    command += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    command += ["--entrypoint", "bash", cpu_image, "-c"]
    command += ["id -un && just --list && just train instruction cpu max_steps=1 save_steps=1"]
    done = run(command, 1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert done.stdout.splitlines()[0] == "tuner"
    assert "train task hw *overrides" in done.stdout
    assert "Done. Adapter, config, logs and manifest.json in /workspace/runs/instruction-cpu" in (
        done.stdout
    )
