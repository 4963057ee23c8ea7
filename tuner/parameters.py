"""What a run trained, counted from the safetensors it saved: its trainable parameters
(an adapter's, or every weight of a full fine-tune), their share of the base model's,
and the bytes written. Read from the files' headers; no tensor is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path

from tuner.project import ROOT

ADAPTER_FILE = "adapter_model.safetensors"


def parameter_count(files: list[Path]) -> int:
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            names = weights.keys()  # safe_open is no mapping: it cannot be iterated
            total += sum(prod(weights.get_slice(name).get_shape()) for name in names)
    return total


def weight_files(folder: Path) -> list[Path]:
    """A model's safetensors (one file or shards), or an adapter's."""
    adapter = folder / ADAPTER_FILE
    return [adapter] if adapter.is_file() else sorted(folder.glob("model*.safetensors"))


def base_model_folder(base_model: str) -> Path | None:
    """The base model's local folder: a path, or a hub id's snapshot in the local cache
    (None when it is not there: nothing is downloaded for a count)."""
    candidate = ROOT / base_model
    if candidate.is_dir():
        return candidate
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(base_model, local_files_only=True, allow_patterns=["*.safetensors"])
        )
    except (LocalEntryNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class TrainedWeights:
    trainable_parameters: int
    base_parameters: int | None  # None: the base is not in the local cache
    trainable_fraction: float | None
    saved_bytes: int  # of the adapter, or of the whole model

    def to_json(self) -> dict:
        return asdict(self)


def trained_weights(run_dir: Path, base_model: str) -> TrainedWeights | None:
    """None where the run saved no safetensors."""
    files = weight_files(run_dir)
    if not files:
        return None
    trainable = parameter_count(files)
    if (run_dir / ADAPTER_FILE).is_file():
        base = base_model_folder(base_model)
        base_files = weight_files(base) if base else []
        base_parameters = parameter_count(base_files) if base_files else None
    else:
        base_parameters = trainable
    return TrainedWeights(
        trainable_parameters=trainable,
        base_parameters=base_parameters,
        trainable_fraction=trainable / base_parameters if base_parameters else None,
        saved_bytes=sum(file.stat().st_size for file in files),
    )
