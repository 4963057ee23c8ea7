# Fine-tuning recipes: `just --list` is the help page.
# Arguments reach the commands as they were typed ("$@"), quotes and spaces intact.
set positional-arguments

# The two environments (scripts/bootstrap.sh); the container images keep them in /opt/venvs.
venvs := env_var_or_default("TUNER_VENVS", ".venvs")
python := venvs + "/train/bin/python"
infer := venvs + "/infer/bin/python"

# List the recipes of this Justfile
default:
    @{{just_executable()}} --list

# Create the training and inference environments (idempotent; minutes the first time)
setup:
    @bash scripts/bootstrap.sh

# Write a Slurm job that trains TASK on HW over several machines (nodes=N, partition=)
slurm task hw *overrides: setup
    {{python}} -m tuner slurm "$@"

# Train the instruction recipe on CPU with the embedded model, then evaluate base vs tuned
demo *overrides: setup
    {{python}} -m tuner demo "$@"

# List tasks and hardware targets
list: setup
    {{python}} -m tuner list

# Print and write the composed Axolotl config for TASK on HW
config task hw *overrides: setup
    {{python}} -m tuner config "$@"

# Validate every task × hardware pair (or one: just validate math a100)
validate *args: setup
    {{python}} -m tuner validate "$@"

# Compose, validate and train TASK on HW with Axolotl (re-run to resume; --fresh restarts)
train task hw *overrides: setup
    {{python}} -m tuner train "$@"

# Generate Magpie instructions and responses for TASK (n=, model=, preset=…; re-run resumes)
generate task *options: setup
    {{infer}} -m tuner generate "$@"

# Filter a JSONL of conversations: rules, near-duplicates, decontamination (preset=, tiers=…)
filter input *options: setup
    {{infer}} -m tuner filter "$@"

# Preference pairs for DPO from a JSONL of conversations (models=, scorer=judge|rm:MODEL, min_margin=)
prefs input *options: setup
    {{infer}} -m tuner prefs "$@"

# What this machine has: GPUs, P2P, environments, container engines, code sandbox
doctor: setup
    {{python}} -m tuner doctor

# Build the image of a hardware target: llm-tuner:HW (--eval adds the evaluation image)
build hw *args: setup
    {{python}} -m tuner build "$@"

# Resolve the images' locks (containers/locks/) for their platforms (--check verifies them)
lock *args: setup
    {{python}} -m tuner lock "$@"

# Estimate memory, time and cost of TASK on HW before renting it (--all: every pair)
plan *args: setup
    {{python}} -m tuner plan "$@"

# A few real steps of TASK on HW: peak memory against the plan (steps=, random_weights=true)
smoke task hw *overrides: setup
    {{python}} -m tuner smoke "$@"

# Evaluate base vs fine-tuned TASK on HW with the task's suite (limit=, backend=, only=)
eval task hw *options: setup
    {{infer}} -m tuner eval "$@"

# Plan, train, evaluate and compare a grid of runs (experiments/NAME.yaml; plan=true only plans)
experiment name hw *overrides: setup
    {{python}} -m tuner experiment "$@"

# Chat with a finished run: vLLM's OpenAI-compatible server, adapter and base (port=, host=)
serve task hw *options: setup
    {{infer}} -m tuner serve "$@"

# Write a finished run's Hub repository with its model card, uploaded with HF_TOKEN (repo=ORG/NAME)
publish task hw *options: setup
    {{python}} -m tuner publish "$@"

# Write a generated dataset's Hub repository with its dataset card, uploaded with HF_TOKEN
publish-data input *options: setup
    {{python}} -m tuner publish-data "$@"

# One Markdown report with plots over every run folder (runs/report/)
report *args: setup
    {{python}} -m tuner report "$@"

# Measure the targets (generate, filter, plan, experiment; all by default) into bench/results/
bench *names: setup
    {{infer}} -m tuner bench "$@"

# Convert the embedded default model once and print its folder
model: setup
    {{python}} -m tuner model

# Run the tests, slow end-to-end ones included (pytest args pass through)
test *args: setup
    {{python}} -m pytest "$@"
