"""The image of each hardware target (containers/targets.yaml): building it with
whatever engine this machine has, and running `just train` inside it.

`just train TASK HW` on a GPU target goes into the target's image when Docker is here
and this process is not already in an image (the images set TUNER_IMAGE=1: a cloud pod
started from the image, or a `docker run` shell, trains directly). The container gets
the GPUs, host IPC (PyTorch's data loaders and NCCL need more than Docker's 64 MB of
shared memory), the checkout at /workspace and the Hugging Face cache; tokens pass by
name only (`-e HF_TOKEN`), so their values appear in no command line or log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import TunerError
from tuner.project import ROOT

TARGETS = ROOT / "containers" / "targets.yaml"
WORKSPACE = "/workspace"
CONTAINER_HOME = "/home/tuner"
# Secrets and settings passed through from the caller's environment, by name.
PASSED_BY_NAME = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    "WANDB_MODE",
    "WANDB_PROJECT",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_ALLOW_FILE_STORE",
    "VLLM_API_KEY",
    # A multi-node run's rendezvous (tuner.launch).
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
)
ENGINES = ("docker", "podman", "buildah")


def load_targets() -> dict[str, dict[str, Any]]:
    """Target name → its image's settings (keys starting with `x-` are shared parts)."""
    return {k: v for k, v in yaml.safe_load(TARGETS.read_text()).items() if not k.startswith("x-")}


def build_args(hardware: str, target: dict[str, Any]) -> dict[str, str]:
    """The Dockerfile's arguments: base image, target (which names its locks), the host
    driver it needs (a label), then the target's own."""
    found = {"BASE": target["base"], "TARGET": hardware}
    if target.get("min_driver"):
        found["MIN_DRIVER"] = target["min_driver"]
    return found | {k: str(v) for k, v in (target.get("args") or {}).items()}


def image_tag(hardware: str, evaluation: bool = False) -> str:
    return f"llm-tuner:{hardware}" + ("-eval" if evaluation else "")


def in_image() -> bool:
    return os.environ.get("TUNER_IMAGE") == "1"


def docker_answers() -> bool:
    """The Docker CLI is here and its daemon answers: a CLI alone builds and runs nothing."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def available_engines() -> list[str]:
    return [e for e in ENGINES if (docker_answers() if e == "docker" else shutil.which(e))]


def build_engine() -> str:
    engines = available_engines()
    if engines:
        return engines[0]
    without_daemon = " (a docker CLI is here, but its daemon does not answer)"
    raise TunerError(
        "No container engine here" + (without_daemon if shutil.which("docker") else "") + ": "
        "start or install Docker, or install podman/buildah "
        "(`apt-get install podman buildah` on Debian and Ubuntu)."
    )


def build_commands(hardware: str, engine: str, evaluation: bool = False) -> list[list[str]]:
    targets = load_targets()
    if hardware not in targets:
        raise TunerError(f"No image for '{hardware}' in {TARGETS}. Targets: {', '.join(targets)}.")
    target = targets[hardware]
    verb = [engine, "build"]
    if engine != "docker":
        # The OCI format drops SHELL (the Dockerfiles' pipefail); Docker's keeps it.
        verb += ["--format", "docker"]
    command = [*verb, "-f", target["dockerfile"], "-t", image_tag(hardware)]
    if target.get("platform"):
        command += ["--platform", target["platform"]]
    for key, value in build_args(hardware, target).items():
        command += ["--build-arg", f"{key}={value}"]
    commands = [[*command, "."]]
    if evaluation:
        commands.append(
            [
                *verb,
                "-f",
                "containers/eval.Dockerfile",
                "-t",
                image_tag(hardware, evaluation=True),
                "--build-arg",
                f"TARGET_IMAGE={image_tag(hardware)}",
                "--build-arg",
                f"TARGET={hardware}",
                ".",
            ]
        )
    return commands


def build(hardware: str, evaluation: bool) -> list[str]:
    """Build the target's image (and the evaluation image on top); the tags built."""
    engine = build_engine()
    for command in build_commands(hardware, engine, evaluation):
        print("$ " + " ".join(command), flush=True)
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            raise TunerError(f"`{' '.join(command)}` failed; its output above says why.")
    return [image_tag(hardware)] + ([image_tag(hardware, True)] if evaluation else [])


def host_driver() -> str | None:
    """The NVIDIA driver version nvidia-smi reports here (None without one)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    versions = done.stdout.split() if done.returncode == 0 else []
    return versions[0] if versions else None


def driver_problem(hardware: str, host: str | None) -> str | None:
    """Why the host's driver cannot run the target's image (its CUDA's minimum driver,
    containers/targets.yaml), or None when it can or either is unknown."""
    need = load_targets().get(hardware, {}).get("min_driver")
    if need is None or host is None:
        return None

    def parts(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version.split(".") if p.isdigit())

    if parts(host) >= parts(need):
        return None
    return (
        f"This host's NVIDIA driver is {host}; the {hardware} image's CUDA 13 needs {need} or "
        "newer (the R580 branch). Update the host's driver. On a host without Docker, "
        "`just setup` installs the PyTorch build for the driver it has instead (uv's "
        "--torch-backend=auto), and `just train` runs there directly."
    )


def should_dispatch() -> bool:
    """Docker is here and its daemon answers, and this is not already an image."""
    return not in_image() and docker_answers()


def hf_cache() -> Path:
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))


def run_command(hardware: str, arguments: list[str], host_network: bool = False) -> list[str]:
    """`docker run` of `just ARGUMENTS` in the target's image; `host_network`: on the
    host's network, so a server inside binds to the host's addresses (loopback too)."""
    command = ["docker", "run", "--rm", "--gpus", "all", "--ipc=host"]
    command += ["--network", "host"] if host_network else []
    command += ["--ulimit", "memlock=-1", "--ulimit", "stack=67108864"]
    command += ["-v", f"{ROOT}:{WORKSPACE}"]
    command += ["-v", f"{hf_cache()}:{CONTAINER_HOME}/.cache/huggingface"]
    for name in PASSED_BY_NAME:
        command += ["-e", name]
    return [*command, image_tag(hardware), *arguments]


def run_in_image(hardware: str, arguments: list[str], host_network: bool = False) -> None:
    command = run_command(hardware, arguments, host_network)
    print("$ " + " ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT).returncode
    if code != 0:
        raise TunerError(
            f"`{arguments[0]}` in the {image_tag(hardware)} image failed (exit code {code}). "
            f"If the image is missing, build it first: `just build {hardware}`."
        )
