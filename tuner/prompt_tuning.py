"""Prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning") through Axolotl, which has no such adapter: an Axolotl plugin that registers
the adapter `prompt-tuning` and wraps the model with PEFT's PromptTuningConfig. The
base model stays frozen; only `num_virtual_tokens` embeddings, prepended to every
input, train. Axolotl then trains, checkpoints, resumes and saves it as any PEFT
adapter (adapter_config.json, adapter_model.safetensors).

`recipes/methods/prompt-tuning.yaml` switches it on (`method=prompt-tuning`). Its keys
are PEFT's names: `num_virtual_tokens`, `prompt_tuning_init` (random, or text: the
embeddings start from the tokens of `prompt_tuning_init_text`).

This module imports Axolotl: it is loaded by Axolotl's processes, in the training
environment."""

from __future__ import annotations

from typing import Any, Literal

from axolotl.integrations.base import AdapterCapabilities, BasePlugin
from pydantic import BaseModel, Field

from tuner.project import PROMPT_TUNING

DEFAULT_INIT_TEXT = "Answer the request below helpfully, accurately and concisely."


class PromptTuningArgs(BaseModel):
    """The plugin's keys in an Axolotl config, validated with Axolotl's schema."""

    num_virtual_tokens: int | None = Field(default=None, ge=1, le=1024)
    prompt_tuning_init: Literal["random", "text"] | None = None
    prompt_tuning_init_text: str | None = None


def peft_config(cfg: Any) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    text = cfg.prompt_tuning_init == "text"
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.num_virtual_tokens or 20,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=(cfg.prompt_tuning_init_text or DEFAULT_INIT_TEXT)
        if text
        else None,
        tokenizer_name_or_path=(cfg.tokenizer_config or cfg.base_model) if text else None,
    )


class PromptTuningPlugin(BasePlugin):
    def get_input_args(self) -> str:
        return "tuner.prompt_tuning.PromptTuningArgs"

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        return [AdapterCapabilities(name=PROMPT_TUNING)]

    def load_adapter(
        self, model: Any, cfg: Any, inference: bool = False, config_only: bool = False
    ) -> tuple[Any, Any] | None:
        if cfg.adapter != PROMPT_TUNING:
            return None
        from peft import PeftModel, get_peft_model

        config = peft_config(cfg)
        if config_only:
            return None, config
        if cfg.lora_model_dir:
            # Axolotl's key for an adapter to start from, whatever its kind.
            return PeftModel.from_pretrained(
                model, cfg.lora_model_dir, is_trainable=not inference
            ), config
        return get_peft_model(model, config), config
