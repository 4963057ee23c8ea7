"""The record of a training run (`runs/TASK-HW/manifest.json`): enough to say later what
produced an adapter — code, libraries, config, data, seed, machine and time."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.project import ROOT, local_file

LIBRARIES = (
    "llm-tuner-recipes",
    "axolotl",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "deepspeed",
    "bitsandbytes",
)


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_fingerprints(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Local files by content hash; hub datasets by name and revision (the hub's own
    versioning), since they are not downloaded until Axolotl runs."""
    out = []
    for entry in datasets:
        path = str(entry.get("path", ""))
        local = local_file(path)
        if local is not None:
            out.append({"path": path, "sha256": sha256_file(local)})
        else:
            out.append(
                {
                    "path": path,
                    "hub": True,
                    "name": entry.get("name"),
                    "split": entry.get("split"),
                    "revision": entry.get("revision"),
                }
            )
    return out


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Atomically (temp file, then rename), so a reader never sees half a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    partial.replace(path)


def read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def finished_manifest(run: Path, task: str, hardware: str, command: str) -> dict[str, Any]:
    """The manifest of a completed run, for a command that needs one (`command`
    names it in the errors)."""
    path = run / "manifest.json"
    if not path.is_file():
        raise TunerError(
            f"{command}: {run} holds no run (no manifest.json). Train it first: "
            f"`just train {task} {hardware}`."
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise TunerError(f"{command}: {path} is not readable JSON ({problem}).") from None
    if manifest.get("status") != "completed":
        raise TunerError(
            f"{command}: the run in {run} is {manifest.get('status', 'not finished')}, not "
            f"completed. Finish it first: `just train {task} {hardware}` resumes it."
        )
    return manifest


def weights_kind(run: Path, command: str) -> str:
    """lora, prompt-tuning (a PEFT adapter) or full (every weight trained)."""
    adapter_config = run / "adapter_config.json"
    if adapter_config.is_file():
        peft_type = json.loads(adapter_config.read_text()).get("peft_type", "")
        return "prompt-tuning" if peft_type == "PROMPT_TUNING" else "lora"
    if (run / "config.json").is_file() and any(run.glob("model*.safetensors")):
        return "full"
    raise TunerError(f"{command}: {run} holds neither an adapter nor a model's weights.")
