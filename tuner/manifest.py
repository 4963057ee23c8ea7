"""The record of a training run (`runs/TASK-HW/manifest.json`): enough to say later what
produced an adapter — code, libraries, config, data, seed, machine and time."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

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
