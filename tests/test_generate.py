"""Magpie generation: templates against the real model's chat template, and generation
with the real embedded model through vLLM's CPU build and through the transformers
fallback, including a run killed mid-way and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.infer_env import infer_env, run_infer, tuner_command
from tuner.errors import TunerError
from tuner.generate.templates import families, family_for, persona, preset
from tuner.models import ensure_embedded_model
from tuner.project import ROOT
from tuner.records import Conversation, read_records


def test_every_family_has_a_template_that_opens_a_user_turn():
    assert {"llama-3", "llama-3.1", "qwen2", "mistral", "mistral-v1", "gemma", "smollm2"} <= set(
        families()
    )
    for family in families().values():
        prompt = family.instruction_prompt(persona("math"))
        assert "{system}" not in prompt
        if family.has_system_turn:
            assert "math tutor" in prompt
        assert family.stop


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral-v1"),
        ("mistralai/Mistral-Small-24B-Instruct-2501", "mistral"),
        ("google/gemma-2-9b-it", "gemma"),
        ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "smollm2"),
    ],
)
def test_the_family_is_guessed_from_the_model_name(model, family):
    assert family_for(model).name == family


def test_an_unknown_model_asks_for_a_template_and_lists_them():
    with pytest.raises(TunerError, match=r"template=FAMILY.*llama-3.*smollm2"):
        family_for("acme/unknown-7b")


# Each family's pre-query against its models' real chat templates (tests/real_tokenizers).
# Llama 3.0's template is TRL's copy of the original, on the Llama 3 vocabulary that 3.1
# kept. Gemma's and Mistral's tekken vocabularies ship in no package here: their
# templates are the published ones (TRL's and Axolotl's copies), rendered with their
# published bos and eos.
TEMPLATE_CASES = [
    ("Qwen/Qwen2.5-7B-Instruct", None, "qwen2"),
    ("meta-llama/Llama-3.1-8B-Instruct", None, "llama-3.1"),
    ("meta-llama/Llama-3.2-3B-Instruct", None, "llama-3.1"),
    ("meta-llama/Llama-3.1-8B-Instruct", "trl/llama3", "llama-3"),
    ("mistralai/Mistral-7B-Instruct-v0.1", None, "mistral-v1"),
    ("mistralai/Mistral-7B-Instruct-v0.2", None, "mistral-v1"),
    ("mistralai/Mistral-7B-Instruct-v0.3", None, "mistral-v3"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", None, "smollm2"),
    (None, "trl/gemma", "gemma"),
    (None, "axolotl/mistral_v7_tekken", "mistral"),
]
PUBLISHED_TOKENS = {"gemma": ("<bos>", "<eos>"), "mistral": ("<s>", "</s>")}


def renderer(model: str | None, reference: str | None, family: str):
    """Renders conversations through the family's chat template as composition does,
    its date fixed where the template prints one."""
    from tests.real_tokenizers import tokenizer_folder
    from tuner.chat import TokenizerFacts, library_template, render

    if model is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(model))
        template = library_template(reference) if reference else tokenizer.chat_template
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
    else:
        template = library_template(reference)
        bos, eos = PUBLISHED_TOKENS[family]
    facts = TokenizerFacts(family, eos, bos, (), template, f"{model or reference}")
    return lambda messages: render(template, facts, messages, generation=False)


@pytest.mark.parametrize(("model", "reference", "name"), TEMPLATE_CASES)
def test_each_pre_query_is_its_familys_chat_template_up_to_the_user_turn(model, reference, name):
    """The pre-query must be exactly what the model saw before a user's message, default
    system prompt included, or Magpie gets fragments."""
    family = families()[name]
    if model is not None and reference is None:
        assert family_for(model).name == name
    render = renderer(model, reference, name)
    system = family.system_prompt(persona("code"))
    opening = [{"role": "system", "content": system}] if system is not None else []
    rendered = render([*opening, {"role": "user", "content": "MARK"}])
    before, after = rendered.split("MARK", 1)
    assert before.rstrip(" ") == family.instruction_prompt(persona("code"))
    assert after.lstrip(" ").startswith(family.stop[0])
    if family.system:
        # With no system message the template inserts the family's default one.
        bare = render([{"role": "user", "content": "MARK"}])
        assert bare.startswith(family.pre_query.replace("{system}", family.system))
    # A later user turn opens with user_turn, after the conversation so far.
    so_far = [*opening, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]
    later = render([*so_far, {"role": "user", "content": "MARK"}]).split("MARK", 1)[0]
    assert later.rstrip(" ") == render(so_far) + family.user_turn


def test_options_name_the_accepted_keys():
    done = run_infer("generate", "math", "count=3")
    assert done.returncode == 2
    assert "unknown option 'count'" in done.stderr and "n=" in done.stderr


def test_an_unknown_task_lists_the_tasks():
    done = run_infer("generate", "poetry")
    assert done.returncode == 2
    assert "Unknown task 'poetry'" in done.stderr and "math" in done.stderr


@pytest.mark.slow
def test_vllm_generation_killed_mid_run_resumes_to_exactly_n_unique_records(tmp_path: Path):
    """SIGKILL once the first checkpoint is on disk, then run the same command again: the
    output has exactly n records, none twice, and the first checkpoint is untouched."""
    n = 5  # in checkpoints of 2: chunks of 2, 2 and 1, the first on disk before the kill
    out = tmp_path / "instruction.jsonl"
    args = ("generate", "instruction", f"n={n}", "checkpoint_every=2", f"out={out}")
    args = (*args, "backend=vllm")
    parts = out.with_suffix(".parts")
    process = subprocess.Popen(
        tuner_command(*args),
        cwd=ROOT,
        env=infer_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    try:
        while not (parts / "chunk-000000.jsonl").is_file():
            assert process.poll() is None, "generation ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended by itself
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first_chunk = (parts / "chunk-000000.jsonl").read_bytes()
    assert not out.exists()

    done = run_infer(*args, data=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (parts / "chunk-000000.jsonl").read_bytes() == first_chunk
    records = read_records(out, Conversation)
    assert len(records) == n
    assert len({r.meta["id"] for r in records}) == n
    instructions = [r.messages[0].content for r in records]
    assert len(set(instructions)) == n
    assert all(text.strip() for text in instructions)
    for record in records:
        assert [m.role for m in record.messages] == ["user", "assistant"]
        assert record.messages[1].content.strip()
        assert record.meta["backend"] == "vllm"
        assert record.meta["family"] == "smollm2"
    assert out.read_bytes().startswith(first_chunk)
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["records"] == n and stats["output_tokens"] > 0
    # Every kept instruction ended on the end-of-turn token; most samples do, so few
    # were replaced for running into max_tokens.
    cut_off = stats["dropped_while_generating"].get("instruction cut off at max_tokens", 0)
    assert cut_off < n


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Data-parallel generation as on a multi-GPU machine (one process per GPU, each
    with its worker number), here with transformers, the path where vLLM cannot run.
    n=3 in checkpoints of 2 makes two chunks (2 + 1): worker 1 writes the second and
    leaves the output to whoever finishes last; worker 0 writes the first and
    assembles the whole."""
    folder = tmp_path_factory.mktemp("two-workers")
    out = folder / "code.jsonl"
    args = ("generate", "code", "n=3", "checkpoint_every=2", f"out={out}", "backend=transformers")
    args = (*args, "workers=2")
    second = run_infer(*args, "worker=1", data=folder)
    assert second.returncode == 0, second.stderr[-4000:]
    parts = out.with_suffix(".parts")
    after_worker_1 = {
        "said": "1 chunk(s) of other workers are still missing" in second.stdout + second.stderr,
        "chunks": sorted(p.name for p in parts.glob("chunk-*.jsonl")),
        "output": out.exists(),
    }
    first = run_infer(*args, "worker=0", data=folder)
    assert first.returncode == 0, first.stderr[-4000:]
    return {"out": out, "after_worker_1": after_worker_1}


@pytest.mark.slow
def test_two_workers_share_one_output_through_the_transformers_fallback(two_workers):
    assert two_workers["after_worker_1"] == {
        "said": True,
        "chunks": ["chunk-000001.jsonl"],
        "output": False,
    }
    records = read_records(two_workers["out"], Conversation)
    assert len(records) == 3 and len({r.meta["id"] for r in records}) == 3
    assert all(r.meta["backend"] == "transformers" for r in records)
    assert all(r.messages[0].content.strip() and r.messages[1].content.strip() for r in records)
    assert "coding assistant" in records[0].meta["system_prompt"]


@pytest.mark.slow
def test_publish_data_names_the_generator_and_takes_its_license(two_workers, cli):
    """`just publish-data` on the generated file: without HF_TOKEN it writes the folder
    only (the Hub is out of reach here)."""
    from huggingface_hub import DatasetCard

    out = two_workers["out"]
    done = cli("publish-data", str(out), "repo=test/code-magpie")
    assert done.returncode == 0, done.stderr
    folder = out.with_suffix(".publish")
    assert (folder / "data" / "train.jsonl").read_bytes() == out.read_bytes()
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0"  # SmolLM2-135M-Instruct's
    assert card.data.size_categories == ["n<1K"]
    assert card.data.configs[0]["data_files"][0]["path"] == "data/train.jsonl"
    assert "with `HuggingFaceTB/SmolLM2-135M-Instruct` (Magpie, smollm2 template" in card.text
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert json.loads((folder / "provenance" / "generate-stats-0.json").read_text()) == stats
    assert "Not uploaded: no HF_TOKEN" in done.stderr


def test_the_fallback_ends_rows_on_a_single_token_stop_string_by_its_id():
    """A chat template's end of turn is one token: transformers stops on its id, as on
    end-of-sequence, instead of matching strings after every step; a stop string of
    several tokens still goes to its string matching."""
    from tuner.generate.backends import TransformersBackend

    backend = TransformersBackend(str(ensure_embedded_model()), seed=0)
    tokenizer = backend.tokenizer
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert backend._stop_token_ids(["<|im_end|>"]) == sorted({end_of_turn, tokenizer.eos_token_id})
    assert backend._stop_token_ids(["<|im_end|>", "\n\nUser:"]) is None
    family = family_for(str(ensure_embedded_model()))
    prompts = [family.instruction_prompt(persona("chat"))] * 4
    completions = backend.complete(prompts, preset("cpu").instruction, [0, 1, 2, 3], family.stop)
    assert any(c.finished for c in completions)
    for completion in completions:
        assert "<|im_end|>" not in completion.text
        # A finished row counts its end-of-turn token, as vLLM does; a cut one does not.
        ids = tokenizer(completion.text, add_special_tokens=False).input_ids
        assert abs(completion.tokens - len(ids) - completion.finished) <= 2


def test_presets_load_and_the_cpu_preset_checkpoints_often():
    assert preset("default").instruction.temperature == 1.0
    assert preset("cpu").checkpoint_every < preset("default").checkpoint_every
    with pytest.raises(TunerError, match="Known: "):
        preset("turbo")


@pytest.mark.parametrize(
    "model", ["meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3"]
)
def test_a_pre_query_keeps_the_one_bos_its_template_writes(model):
    """Tokenizers that add a bos by themselves must not add a second one to a prompt
    whose template already starts with it (vLLM tokenizes text prompts that way)."""
    from transformers import AutoTokenizer

    from tests.real_tokenizers import tokenizer_folder
    from tuner.generate.backends import prompt_tokens

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(model))
    prompt = family_for(model).instruction_prompt(persona("math"))
    assert tokenizer(prompt)["input_ids"][:2] == [tokenizer.bos_token_id] * 2
    ids = prompt_tokens(tokenizer, prompt)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_cpu_engines_run_in_float32_where_the_cpu_would_emulate_bfloat16(monkeypatch):
    # This machine's CPU has AVX512-BF16; one without it cannot be had here, so its
    # capability flags are what the test replaces.
    import torch

    from tuner.evaluate.run import engine_for
    from tuner.generate.backends import cpu_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_dtype() == "float32"
    assert engine_for({"bf16": False}, "hf").dtype == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_dtype() == "bfloat16" == engine_for({"fp16": True}, "hf").dtype
