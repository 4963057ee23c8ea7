"""The README's first command, `just demo`, in a fresh copy of this working tree, the
way a new user meets the project: set-up, model conversion, the instruction recipe
trained on the embedded model, base vs tuned; then what quality the run shows.

The copy shares this checkout's environments (its `.venvs/` is a link): CI's own
`just test` builds them first on its clean clone. Everything else in the copy (the
cache, the converted model, the runs) starts empty. The other end-to-end chains, which
the suite's second worker runs meanwhile, are test_pipeline.py, test_plumbing.py and
test_judged_and_code_suites.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_working_tree
from tests.infer_env import run_infer
from tests.run_checks import assert_comparison_matches_the_harness_json, trainer_log
from tuner.manifest import sha256_file
from tuner.project import ROOT

pytestmark = pytest.mark.slow


def clean_env() -> dict[str, str]:
    """This machine's environment without the test run's own virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    venv_bin = str(Path(os.sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.pop("TUNER_RUNS", None)
    env.pop("TUNER_CACHE", None)
    # The Hub is out of reach here: `publish` writes its folder and uploads nothing.
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    return env


class Clone:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / ".venvs" / "train" / "bin" / "python"
        self.runs = root / "runs"

    def tuner(self, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.python), "-m", "tuner", *args],
            cwd=self.root,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def infer(self, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        """`python -m tuner ARGS` in the copy's inference environment (vLLM)."""
        return subprocess.run(
            [str(self.root / ".venvs" / "infer" / "bin" / "python"), "-m", "tuner", *args],
            cwd=self.root,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def started(command: list[str], root: Path) -> subprocess.Popen:
    """A command in the copy, in a process group of its own (its children die with it),
    its output piped."""
    return subprocess.Popen(
        command,
        cwd=root,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Clone, subprocess.CompletedProcess]:
    """The README's first command in a fresh copy: `.venvs/bin/just demo`."""
    root = tmp_path_factory.mktemp("fresh") / "repo"
    copy_working_tree(root)
    (root / ".venvs").symlink_to(ROOT / ".venvs", target_is_directory=True)
    demo = started([str(root / ".venvs" / "bin" / "just"), "demo"], root)
    try:
        stdout, stderr = demo.communicate(timeout=2700)
    except subprocess.TimeoutExpired:
        # The whole process group: training and evaluation run in grandchildren.
        os.killpg(demo.pid, signal.SIGKILL)
        stdout, stderr = demo.communicate()
    done = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return Clone(root), done


def test_demo_ends_with_the_base_vs_tuned_table_of_the_instruction_suite(demo):
    clone, done = demo
    assert "base vs. instruction LoRA" in done.stdout
    assert "prompt_level_strict_acc" in done.stdout
    assert f"Run folder: {clone.runs / 'instruction-cpu'}" in done.stdout
    eval_dir = clone.runs / "instruction-cpu" / "eval"
    comparison = assert_comparison_matches_the_harness_json(eval_dir)
    metrics = {(row["task"], row["metric"]) for row in comparison["rows"]}
    assert ("tuner_ifeval", "prompt_level_strict_acc") in metrics
    assert ("tuner_ifeval", "distinct_2") in metrics
    assert ("tuner_perplexity_instruction", "word_perplexity") in metrics
    settings = comparison["settings"]
    assert settings["backend"] == "vllm" and settings["variant"] == "local"
    assert settings["tokenizer"] == str(clone.runs / "instruction-cpu")
    # One lm-eval command per model; they differ in the model path only (vLLM runs the
    # adapter merged into the base).
    commands = [
        next(
            line
            for line in (eval_dir / label / "lm-eval.log").read_text().splitlines()
            if line.startswith("$ ")
        )
        for label in ("base", "tuned")
    ]
    base_args, tuned_args = (command.split() for command in commands)
    differing = [(b, t) for b, t in zip(base_args, tuned_args, strict=True) if b != t]
    assert len(differing) == 2, differing  # --model_args and --output_path
    assert str(eval_dir / "merged") in differing[0][1]
    assert "--apply_chat_template" in base_args
    # The adapter moved the model: its answers differ from the base model's.
    answers = {
        label: [
            json.loads(line)["resps"][0][0]
            for line in next((eval_dir / label).glob("call-0/*/samples_tuner_ifeval_*.jsonl"))
            .read_text()
            .splitlines()
        ]
        for label in ("base", "tuned")
    }
    assert answers["base"] != answers["tuned"]


def test_instruction_run_loss_falls_and_the_adapter_is_saved(demo):
    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    losses = [row["loss"] for row in trainer_log(run) if "loss" in row]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert (run / "adapter_model.safetensors").stat().st_size > 1_000_000
    assert json.loads((run / "adapter_config.json").read_text())["r"] == 16


def test_manifest_records_code_libraries_config_data_seed_and_time(demo):
    from tuner.manifest import sha256_text

    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert len(manifest["git"]["commit"]) == 40
    assert manifest["libraries"]["axolotl"] == "0.19.0"
    assert manifest["libraries"]["torch"].startswith("2.13.0")
    assert manifest["config_sha256"] == sha256_text((run / "config.yaml").read_text())
    [data] = manifest["datasets"]
    assert data["sha256"] == sha256_file(clone.root / "recipes/data/instruction.jsonl")
    assert manifest["seed"] == 42 and manifest["wall_time_s"] > 0


def test_manifest_records_the_chat_format_trained_and_the_one_saved(demo):
    from tuner.manifest import sha256_text

    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    chat = json.loads((run / "manifest.json").read_text())["chat"]
    assert chat["template"] == "chatml"
    assert chat["end_of_turn"] == chat["eos"] == "<|im_end|>"
    saved = chat["saved"]
    assert saved["chat_template_sha256"] == sha256_text((run / "chat_template.jinja").read_text())
    assert saved["end_of_turn"] == saved["eos"] == "<|im_end|>"


def test_eval_refuses_a_chat_template_other_than_the_trained_one(demo, tmp_path):
    """On a copy of the trained run whose saved template was edited since."""
    clone, _ = demo
    runs = tmp_path / "runs"
    shutil.copytree(
        clone.runs / "instruction-cpu",
        runs / "instruction-cpu",
        ignore=shutil.ignore_patterns("checkpoint-*", "eval", "merged", "prepared"),
    )
    template = runs / "instruction-cpu" / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    done = run_infer("eval", "instruction", "cpu", "limit=1", runs=runs, timeout=300)
    assert done.returncode == 2  # the command line's exit status for a refused input
    assert "not the one the run trained with" in done.stderr and "template=any" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (runs / "instruction-cpu" / "eval").exists()


def test_the_adapter_changes_the_model_and_fits_the_training_data_better(demo):
    """Loss of the training answers under the base model and under base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clone, _ = demo
    model_dir = clone.root / ".cache/models/SmolLM2-135M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (clone.root / "recipes/data/instruction.jsonl").open()]

    def answer_loss(model) -> float:
        total = 0.0
        for row in rows[:8]:
            turns = row["conversations"]
            roles = {"system": "system", "human": "user", "gpt": "assistant"}
            messages = [{"role": roles[t["from"]], "content": t["value"]} for t in turns]
            prompt = tokenizer.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=False
            )
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = torch.tensor([tokenizer(full, add_special_tokens=False).input_ids])
            labels = ids.clone()
            labels[0, : len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
            with torch.no_grad():
                total += model(input_ids=ids, labels=labels).loss.item()
        return total / 8

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base_loss = answer_loss(base)
    tuned = PeftModel.from_pretrained(base, clone.runs / "instruction-cpu")
    tuned_loss = answer_loss(tuned)
    assert tuned_loss < 0.7 * base_loss, (base_loss, tuned_loss)


def test_publish_writes_the_hub_folder_with_a_card_holding_the_comparison(demo):
    """`just publish instruction cpu repo=test/x` without HF_TOKEN: the folder, nothing
    uploaded. The card is read back with huggingface_hub, which parses and checks its
    metadata; the model-index's values are comparison.json's."""
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer

    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    done = clone.tuner("publish", "instruction", "cpu", "repo=test/x")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Not uploaded: no HF_TOKEN" in done.stderr
    folder = run / "publish"
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (card.data.license, card.data.library_name) == ("apache-2.0", "peft")
    rows = json.loads((run / "eval" / "comparison.json").read_text())["rows"]
    expected = {(row["task"], row["metric"]): row for row in rows}
    indexed = {(r.dataset_type, r.metric_type): r for r in card.data.eval_results}
    assert indexed.keys() == expected.keys()
    for key, result in indexed.items():
        row = expected[key]
        assert result.metric_value == row["tuned"] and result.metric_args["base"] == row["base"]
        assert result.metric_args.get("tuned_stderr") == row["tuned_stderr"]
        assert "backend vllm" in result.metric_config
    assert "| tuner_ifeval | prompt_level_strict_acc |" in card.text
    # The adapter as trained, its base named by hub id for a user of the Hub repository.
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    weights = "adapter_model.safetensors"
    assert sha256_file(folder / weights) == sha256_file(run / weights)
    assert (folder / "config.yaml").read_text() == (run / "config.yaml").read_text()
    template = AutoTokenizer.from_pretrained(folder).chat_template
    assert template == AutoTokenizer.from_pretrained(run).chat_template


def test_publish_merged_writes_weights_that_compute_what_base_and_adapter_do(demo):
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    clone, _ = demo
    run = clone.runs / "instruction-cpu"
    done = clone.tuner("publish", "instruction", "cpu", "repo=test/x", "merged=true")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = run / "publish"
    assert not (folder / "adapter_config.json").exists()
    assert not (folder / "merged-from.json").exists()  # where the adapter lay, here
    assert ModelCard.load(folder / "README.md").data.library_name == "transformers"
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 30, 2]])
    base = AutoModelForCausalLM.from_pretrained(clone.root / ".cache/models/SmolLM2-135M-Instruct")
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, run).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-3)


def test_publish_uploads_with_the_token_from_the_environment_and_never_prints_it(
    demo, cli, monkeypatch
):
    """The Hub is out of reach here: HfApi's two calls are replaced by recorders; what
    they are given is what the Hub would receive."""
    from huggingface_hub import HfApi

    clone, _ = demo
    calls = []
    monkeypatch.setenv("TUNER_RUNS", str(clone.runs))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_but_secret")
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, repo, **kw: (
            calls.append(("create", self.token, repo, kw)) or f"https://huggingface.co/{repo}"
        ),
    )
    monkeypatch.setattr(
        HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", self.token, kw))
    )
    done = cli("publish", "instruction", "cpu", "repo=test/x", "private=true")
    assert done.returncode == 0, done.stderr
    assert "Uploaded to https://huggingface.co/test/x" in done.stdout
    assert "hf_not_a_real_token" not in done.stdout + done.stderr
    (_, token, repo, created), (_, same, uploaded) = calls
    assert token == same == "hf_not_a_real_token_but_secret" and repo == "test/x"
    assert created == {"repo_type": "model", "private": True, "exist_ok": True}
    assert uploaded["repo_id"] == "test/x"
    assert uploaded["folder_path"] == clone.runs / "instruction-cpu" / "publish"


def test_publish_refuses_what_it_cannot_publish_and_leaves_nothing(demo, cli, runs):
    done = cli("publish", "instruction", "cpu", "repo=test/x")
    assert done.returncode == 2 and "just train instruction cpu" in done.stderr
    assert cli("publish", "instruction", "cpu", "repo=not a repo").returncode == 2
    assert "give the Hub repository" in cli("publish", "instruction", "cpu").stderr
    assert not runs.exists()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_answers_as_the_adapter_and_as_the_base_and_stops_on_sigint(demo):
    """`just serve instruction cpu` on a loopback port: vLLM's CPU build serves the
    demo's adapter and its base; the openai client talks to both, and the adapter's
    answer to a training prompt is not the base's. SIGINT stops the server."""
    import socket
    import time

    clone, _ = demo
    port = free_port()
    python = clone.root / ".venvs/infer/bin/python"
    server = started(
        [str(python), "-m", "tuner", "serve", "instruction", "cpu", f"port={port}"], clone.root
    )
    try:
        printed = []
        for line in server.stdout:  # the usage lines come once the server answers
            printed.append(line)
            if line.startswith("print(reply"):
                break
        usage = "".join(printed)
        assert f"Serving at http://127.0.0.1:{port}/v1: instruction, " in usage, (
            usage + server.stderr.read()[-3000:] if server.poll() is not None else usage
        )
        assert f"curl http://127.0.0.1:{port}/v1/chat/completions" in usage
        # Prompts it trained on, without their answers.
        roles = {"system": "system", "human": "user"}
        conversations = [
            [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"][:2]]
            for row in map(json.loads, (clone.root / "recipes/data/instruction.jsonl").open())
        ][:4]
        base = "HuggingFaceTB/SmolLM2-135M-Instruct"
        answers = infer_chat(port, ["instruction", base], conversations)
        assert all(all(replies) for replies in answers.values()), answers
        assert answers["instruction"] != answers[base]
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
        assert "Server stopped." in server.stderr.read()
        time.sleep(1)
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def infer_chat(port: int, models: list[str], conversations: list[list[dict]]) -> dict:
    """Each model's greedy answers through the openai client (the inference
    environment's, as a user of the server would have it)."""
    from tests.infer_env import infer_json

    script = f"""
import json
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="none")
answers = {{model: [] for model in {models!r}}}
for messages in json.loads({json.dumps(conversations)!r}):
    for model in answers:
        reply = client.chat.completions.create(
            model=model, temperature=0, max_tokens=48, messages=messages
        )
        answers[model].append(reply.choices[0].message.content)
print(json.dumps(answers))
"""
    return infer_json(script)


def test_serve_refuses_an_open_host_without_an_api_key(demo, cli, monkeypatch):
    clone, _ = demo
    monkeypatch.setenv("TUNER_RUNS", str(clone.runs))
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    done = cli("serve", "instruction", "cpu", "host=0.0.0.0")
    assert done.returncode == 2
    assert "host=0.0.0.0" in done.stderr and "VLLM_API_KEY" in done.stderr
    assert "port=70000 is not valid" in cli("serve", "instruction", "cpu", "port=70000").stderr
