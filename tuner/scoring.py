"""Scoring responses: an LLM judge grading each with a rubric (generate/judge.yaml)
through vLLM's structured output, or a sequence-classification reward model. The
preference stage pairs by these scores; the open-ended evaluation suites judge with
the same judge."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import TunerError
from tuner.generate.backends import Completion, ModelSlot
from tuner.generate.templates import GENERATE_DIR, Sampling
from tuner.models import resolve_model

Prompt = list[dict[str, str]]


def load_judge_settings() -> dict[str, Any]:
    path = GENERATE_DIR / "judge.yaml"
    settings = yaml.safe_load(path.read_text())
    for key in ("rubric", "schema", "candidates", "judge"):
        if key not in settings:
            raise TunerError(f"{path}: the key '{key}' is missing.")
    return settings


class JudgeScorer:
    """An instruction-following model grading each response with the rubric; vLLM's
    structured output constrains its answer to the rubric's JSON schema."""

    def __init__(self, slot: ModelSlot, model: str, settings: dict[str, Any]) -> None:
        self.name = f"judge:{model}"
        self.backend = slot.get(model, "vllm")
        self.settings = settings

    def score(self, prompts: list[Prompt], responses: list[list[str]]) -> list[list[float]]:
        rubric = self.settings["rubric"]
        requests, shape = [], []
        for prompt, candidates in zip(prompts, responses, strict=True):
            instruction = "\n\n".join(m["content"] for m in prompt if m["role"] == "user")
            shape.append(len(candidates))
            for response in candidates:
                filled = rubric.replace("{instruction}", instruction).replace(
                    "{response}", response
                )
                requests.append(self.backend.render([{"role": "user", "content": filled}], True))
        completions = self.backend.complete(
            requests,
            Sampling(**self.settings["judge"]),
            seeds=[0] * len(requests),
            stop=[],
            schema=self.settings["schema"],
            logprobs=20,
        )
        scale = self.settings["schema"]["properties"]["score"]["maximum"]
        scores = [expected_score(c, scale) for c in completions]
        grouped, start = [], 0
        for size in shape:
            grouped.append(scores[start : start + size])
            start += size
        return grouped


def expected_score(completion: Completion, scale: int) -> float:
    """The judge's score weighted by its probabilities (as G-Eval does): at the score's
    position, the mean of the digits 1..scale weighted by their probabilities. A judge
    that would answer 4 either way but is surer of one response still ranks the two,
    where the integers alone tie."""
    for position in completion.top_logprobs or []:
        digits = {
            int(token.strip()): math.exp(logprob)
            for token, logprob in position.items()
            if token.strip().isdigit() and 1 <= int(token.strip()) <= scale
        }
        if digits:
            return sum(d * p for d, p in digits.items()) / sum(digits.values())
    return parse_score(completion.text)


def load_reward_model(path: str, device: str) -> tuple[Any, Any]:
    """The tokenizer and the model; a LoRA reward model (the micro-judge) as its base
    with the adapter and the score head it trained, merged."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dtype = torch.bfloat16 if device == "cuda" else None
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        loaded = AutoPeftModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype
        )
        return tokenizer, loaded.merge_and_unload().to(device)
    loaded = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    return tokenizer, loaded.to(device)


def parse_score(text: str) -> float:
    try:
        return float(json.loads(text)["score"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        # Structured output makes this rare (a completion cut at max_tokens).
        match = re.search(r"\d+(\.\d+)?", text)
        return float(match.group()) if match else float("nan")


class RewardModelScorer:
    """A sequence-classification reward model (e.g. Skywork-Reward, ArmoRM, or a
    micro-judge run folder): the logit of the conversation with the response as the
    assistant's turn."""

    def __init__(self, model: str) -> None:
        import torch

        self.name = f"rm:{model}"
        self.torch = torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        path = resolve_model(model)
        try:
            self.tokenizer, self.model = load_reward_model(path, device)
        except OSError as problem:
            raise TunerError(
                f"rm:{model}: no reward model there, neither a folder here nor one the Hub "
                f"serves ({str(problem).splitlines()[0]}). Name a run folder such as "
                "runs/micro-judge-HW (`just train micro-judge HW` writes it) or a hub id."
            ) from None
        self.model.eval()

    def score(self, prompts: list[Prompt], responses: list[list[str]]) -> list[list[float]]:
        grouped = []
        for prompt, candidates in zip(prompts, responses, strict=True):
            row = []
            for response in candidates:
                text = self.tokenizer.apply_chat_template(
                    [*prompt, {"role": "assistant", "content": response}], tokenize=False
                )
                inputs = self.tokenizer(text, return_tensors="pt", truncation=True).to(
                    self.model.device
                )
                with self.torch.inference_mode():
                    row.append(float(self.model(**inputs).logits[0, 0]))
            grouped.append(row)
        return grouped
