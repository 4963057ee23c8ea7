"""Batch text generation behind one interface: vLLM's offline engine (GPU, or its CPU
build) and transformers `generate` as the fallback where vLLM cannot run.

Both take raw prompt strings (the Magpie pre-query templates are not chat messages)
and a per-prompt seed, so that a resumed run samples what the interrupted one would
have.
"""

from __future__ import annotations

import gc
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Protocol

from tuner.errors import TunerError
from tuner.generate.templates import Sampling
from tuner.models import resolve_model
from tuner.project import cache_dir

BACKENDS = ("auto", "vllm", "transformers")


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finished: bool
    """True when generation ended on a stop string or the end-of-sequence token,
    False when it ran into max_tokens."""
    top_logprobs: list[dict[str, float]] | None = None
    """With `logprobs=k`: per generated position, the k likeliest tokens (as text) and
    their log-probabilities under the model (before sampling constraints)."""


class Backend(Protocol):
    name: str

    def complete(
        self,
        prompts: list[str],
        sampling: Sampling,
        seeds: list[int],
        stop: list[str],
        schema: dict[str, Any] | None = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """One completion per prompt; with `schema`, each is JSON matching it; with
        `logprobs`, each carries its positions' top tokens."""
        ...

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The conversation through the model's own chat template, as text."""
        ...


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """A prompt's token ids as written. Prompts here are rendered chat templates, which
    write their own bos; a tokenizer that adds one (Llama 3, Mistral) would double it."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_dtype() -> str:
    """The dtype every CPU engine runs in (generation, evaluation, judging, the bench):
    bfloat16 where the CPU computes in it (AVX512-BF16 or AMX), float32 where it would
    only emulate bfloat16, several times slower."""
    import torch

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native else "float32"


def configure_vllm_for_cpu() -> None:
    """Settings the CPU build of vLLM needs to start on a CPU; the user's own
    environment wins."""
    cache = cache_dir()
    defaults = {
        "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB; start-up refuses without it on small machines
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: no spawned workers
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


class ChatTemplate:
    """Rendering through the model's own chat template (the tokenizer's)."""

    tokenizer: Any

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )


class VllmBackend(ChatTemplate):
    name = "vllm"

    def __init__(
        self,
        model: str,
        seed: int,
        tensor_parallel: int = 1,
        compile: bool | None = None,
        dtype: str | None = None,
    ) -> None:
        """`compile`: torch.compile (and CUDA graphs on a GPU) before generating. On CPU it
        costs about two minutes at start, for about 1.5 times the tokens/s in bfloat16 on
        an AMX CPU and 5 % more in float32 on an AVX2 one (253 against 243 at a batch of
        64), so it pays on long runs only; unset, it is on for GPUs and off for CPUs.
        `dtype`: unset, `cpu_dtype()` on CPUs and the model's own on GPUs."""
        on_cpu = cpu_only()
        if on_cpu:
            configure_vllm_for_cpu()
        from vllm import LLM

        self.llm = LLM(
            model=model,
            seed=seed,
            tensor_parallel_size=tensor_parallel,
            enforce_eager=not (compile if compile is not None else not on_cpu),
            dtype=dtype or (cpu_dtype() if on_cpu else "auto"),
            max_model_len=4096 if on_cpu else None,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def complete(
        self,
        prompts: list[str],
        sampling: Sampling,
        seeds: list[int],
        stop: list[str],
        schema: dict[str, Any] | None = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=schema) if schema else None

        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                repetition_penalty=sampling.repetition_penalty,
                stop=stop,
                seed=seed,
                structured_outputs=structured,
                logprobs=logprobs,
            )
            for seed in seeds
        ]
        tokenized = [{"prompt_token_ids": prompt_tokens(self.tokenizer, p)} for p in prompts]
        outputs = self.llm.generate(tokenized, params, use_tqdm=False)
        return [
            Completion(
                text=out.outputs[0].text,
                tokens=len(out.outputs[0].token_ids),
                finished=out.outputs[0].finish_reason == "stop",
                top_logprobs=[
                    {entry.decoded_token or "": entry.logprob for entry in position.values()}
                    for position in out.outputs[0].logprobs
                ]
                if logprobs
                else None,
            )
            for out in outputs
        ]


class TransformersBackend(ChatTemplate):
    """transformers `generate` in batches: slower, but runs wherever torch does."""

    name = "transformers"

    def __init__(
        self, model: str, seed: int, batch_size: int = 8, dtype: str | None = None
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = dtype or (cpu_dtype() if cpu_only() else None)
        self.model = AutoModelForCausalLM.from_pretrained(
            model, dtype=getattr(torch, dtype) if dtype else "auto"
        )
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    def complete(
        self,
        prompts: list[str],
        sampling: Sampling,
        seeds: list[int],
        stop: list[str],
        schema: dict[str, Any] | None = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        if schema or logprobs:
            raise TunerError(
                "Structured output and log-probabilities (the judge) need vLLM; run in the "
                "inference "
                "environment (`just prefs`), or score with a reward model (scorer=rm:MODEL)."
            )
        completions: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            # One seed per batch: transformers samples a batch from one generator.
            self.torch.manual_seed(seeds[start])
            completions += self._complete_batch(batch, sampling, stop)
        return completions

    def _stop_token_ids(self, stop: list[str]) -> list[int] | None:
        """The ids of the stop strings and end-of-sequence when every stop string is one
        token of the vocabulary, else None."""
        vocabulary = self.tokenizer.get_vocab()
        if not all(text in vocabulary for text in stop):
            return None
        ids = {vocabulary[text] for text in stop}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def _complete_batch(
        self, prompts: list[str], sampling: Sampling, stop: list[str]
    ) -> list[Completion]:
        inputs = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.model.device)
        sample = sampling.temperature > 0
        stop_ids = self._stop_token_ids(stop)
        # Stop strings that are single tokens (a chat template's end of turn) end rows as
        # end-of-sequence ids do; matching strings after every step costs far more.
        stopping = (
            {"eos_token_id": stop_ids}
            if stop_ids
            else {"stop_strings": stop, "tokenizer": self.tokenizer}
        )
        with self.torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=sampling.max_tokens,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                # transformers keeps only the 50 likeliest tokens unless told otherwise;
                # vLLM and the presets sample from the whole vocabulary.
                top_k=0 if sample else None,
                repetition_penalty=sampling.repetition_penalty,
                pad_token_id=self.tokenizer.pad_token_id,
                **stopping,
            )
        # A finished row ends on end-of-sequence (or a stop token), then padding (often
        # the same token); a row cut at max_new_tokens has neither.
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, *(stop_ids or [])}
        completions = []
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            end = next((i for i, token in enumerate(row) if token in ends), None)
            ids = row if end is None else row[:end]
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            ended = next((s for s in stop if s in text), None)
            if ended:
                text = text[: text.index(ended)]
            finished = end is not None or ended is not None
            completions.append(
                Completion(text=text, tokens=len(ids) + (end is not None), finished=finished)
            )
        return completions


def open_backend(
    name: str,
    model: str,
    seed: int,
    tensor_parallel: int = 1,
    compile: bool | None = None,
    dtype: str | None = None,
) -> Backend:
    """The named backend; `auto` takes vLLM when it is installed, else transformers.
    `dtype` (torch's name) unset: each backend's default."""
    if name not in BACKENDS:
        raise TunerError(f"Unknown backend '{name}'. Choose one of: {', '.join(BACKENDS)}.")
    if name == "auto":
        name = "vllm" if importlib.util.find_spec("vllm") else "transformers"
    if name == "vllm":
        if not importlib.util.find_spec("vllm"):
            raise TunerError(
                "vLLM is not installed in this environment. Run `just setup` (it builds "
                ".venvs/infer with vLLM's CPU build), or use backend=transformers."
            )
        return VllmBackend(model, seed, tensor_parallel, compile, dtype)
    return TransformersBackend(model, seed, dtype=dtype)


class ModelSlot:
    """One model loaded at a time, as one GPU holds one: asking for another model frees
    the current one first; asking for the same one again reuses it (a model that both
    answers and judges loads once)."""

    def __init__(self, seed: int, dtype: str | None = None) -> None:
        self.seed = seed
        self.dtype = dtype
        self.model: str | None = None
        self.backend: Backend | None = None

    def get(self, model: str, kind: str = "auto") -> Backend:
        if self.backend is not None and self.model == model and kind in ("auto", self.backend.name):
            return self.backend
        self.release()
        self.backend = open_backend(kind, resolve_model(model), self.seed, dtype=self.dtype)
        self.model = model
        return self.backend

    def release(self) -> None:
        self.backend = self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
