"""Validate a composed config: Axolotl's own schema with the target's capabilities, plus
the checks Axolotl lacks (misspelt keys, bf16 on Turing, FlashAttention-2 where no build
exists, DeepSpeed on the DGX Spark, packing that would leak attention across samples,
an attention backend whose kernels the target's image does not have, an end of turn
that training, the chat template and generation do not agree on, values out of range
for the keys Axolotl leaves unbounded).
Attention backends are read through Axolotl's own tables, so they follow its releases."""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuner.errors import TunerError
from tuner.hardware import GpuProfile, gpu_profile
from tuner.recipes import ComposedRecipe

if TYPE_CHECKING:
    from tuner.chat import ChatFormat

# Compute capabilities for which no FlashAttention-2 build exists: Turing (flash-attn
# #542) and the DGX Spark's GB10 (flash-attn #1969).
NO_FLASH_ATTENTION = {"7.5": "Turing (sm_75)", "12.1": "the DGX Spark's GB10 (sm_121)"}


@dataclass
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass
class ValidationReport:
    task: str
    hardware: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{self.task} × {self.hardware}: valid"
        lines = [f"{self.task} × {self.hardware}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class TrainingBounds(BaseModel):
    """The valid ranges of the numeric keys the recipes set and Axolotl's schema leaves
    unbounded (it accepts `lora_r: -4`). Only the bounds live here; the keys and their
    meaning are Axolotl's."""

    model_config = ConfigDict(extra="ignore")

    lora_r: int | None = Field(None, ge=1)
    lora_alpha: float | None = Field(None, gt=0)
    lora_dropout: float | None = Field(None, ge=0, lt=1)
    micro_batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    sequence_len: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0, le=1)
    num_epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)


def range_checks(config: dict[str, Any]) -> list[Problem]:
    try:
        TrainingBounds.model_validate(config)
    except ValidationError as err:
        return [
            Problem(str(error["loc"][0]), f"{error['input']!r}: {error['msg'].lower()}.")
            for error in err.errors()
        ]
    return []


def validate(recipe: ComposedRecipe) -> ValidationReport:
    report = ValidationReport(recipe.task, recipe.hardware)
    profile = gpu_profile(recipe.meta, f"recipes/hardware/{recipe.hardware}.yaml")
    report.problems += unknown_keys(recipe.config)
    report.problems += range_checks(recipe.config)
    report.problems += hardware_checks(recipe.config, profile)
    report.problems += image_checks(recipe.config, recipe.hardware)
    report.problems += chat_checks(recipe)
    # Axolotl's messages about keys it does not know would repeat the ones above.
    if not report.problems:
        report.problems += axolotl_checks(recipe.config, profile)
    return report


@functools.cache
def _schema_fields() -> tuple[set[str], set[str]]:
    from axolotl.utils.schemas.config import AxolotlInputConfig
    from axolotl.utils.schemas.datasets import DPODataset, SFTDataset

    def names(model: Any) -> set[str]:
        out = set()
        for name, info in model.model_fields.items():
            out.add(name)
            if info.alias:
                out.add(info.alias)
        return out

    return names(AxolotlInputConfig), names(SFTDataset) | names(DPODataset)


def plugin_fields(plugins: list[Any]) -> tuple[set[str], list[Problem]]:
    """The config keys the named Axolotl plugins add (their input args), and a problem
    for each plugin that does not load (Axolotl's registry only logs the failure)."""
    import importlib

    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    fields: set[str] = set()
    problems = []
    for index, name in enumerate(plugins):
        if loadable(name):
            manager.register(name)
        if not isinstance(name, str) or name not in manager.plugins:
            problems.append(
                Problem(
                    f"plugins[{index}]",
                    f"{name!r} does not load as an Axolotl plugin: give it as module.Class, "
                    "with the module importable in the training environment.",
                )
            )
            continue
        args = manager.plugins[name].get_input_args()
        if args:
            module, cls = args.rsplit(".", 1)
            fields |= set(getattr(importlib.import_module(module), cls).model_fields)
    return fields, problems


def loadable(plugin: Any) -> bool:
    """`module.Class` names a class, the module found as Axolotl looks for it (under
    axolotl.integrations, then as it is): checked first, because Axolotl's registry
    prints a traceback for a plugin that does not load."""
    import importlib

    if not isinstance(plugin, str) or "." not in plugin:
        return False
    module, cls = plugin.rsplit(".", 1)
    for candidate in (f"axolotl.integrations.{module}", module):
        try:
            return hasattr(importlib.import_module(candidate), cls)
        except ImportError:
            continue
    return False


def unknown_keys(config: dict[str, Any]) -> list[Problem]:
    """Axolotl drops keys it does not know without a word; a typo then silently trains
    with the default. Report each with the nearest valid key."""
    top_fields, dataset_fields = _schema_fields()
    plugins = config.get("plugins") or []
    added, problems = plugin_fields(plugins if isinstance(plugins, list) else [plugins])
    top_fields = top_fields | added
    problems += [_unknown(key, key, top_fields) for key in config if key not in top_fields]
    for index, entry in enumerate(config.get("datasets") or []):
        if isinstance(entry, dict):
            problems += [
                _unknown(f"datasets[{index}].{key}", key, dataset_fields)
                for key in entry
                if key not in dataset_fields
            ]
    return problems


def _unknown(where: str, key: str, valid: set[str]) -> Problem:
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return Problem(where, f"not an Axolotl config key, Axolotl would ignore it.{hint}")


def attention(config: dict[str, Any]) -> str:
    """The attention backend a config selects: `attn_implementation`, or the legacy
    boolean flag Axolotl maps to one, or eager."""
    from axolotl.utils.schemas.enums import LEGACY_ATTN_FLAG_TO_IMPL, attn_impl_base

    if config.get("attn_implementation"):
        return attn_impl_base(config["attn_implementation"])
    for flag, impl in LEGACY_ATTN_FLAG_TO_IMPL.items():
        if config.get(flag):
            return impl
    return "eager"


def hardware_checks(config: dict[str, Any], profile: GpuProfile | None) -> list[Problem]:
    from axolotl.utils.schemas.enums import (
        ATTN_IMPLS_SUPPORTING_PACKING,
        ATTN_IMPLS_USING_FLASH_LIB,
    )

    problems = []
    attn = attention(config)
    if config.get("sample_packing") and attn not in ATTN_IMPLS_SUPPORTING_PACKING:
        problems.append(
            Problem(
                "sample_packing",
                f"packing with {attn} attention lets packed samples attend to each other "
                "(only variable-length kernels keep them apart: "
                f"{', '.join(sorted(i for i in ATTN_IMPLS_SUPPORTING_PACKING if '/' not in i))}). "
                "Set sample_packing: false, or an attention backend that supports packing.",
            )
        )
    if profile is None:
        return problems
    cc = profile.compute_capability
    if config.get("bf16") is True and float(cc) < 8.0:
        problems.append(
            Problem(
                "bf16",
                f"{profile.name} (sm_{cc.replace('.', '')}) has no native bf16: PyTorch "
                "emulates it, slowly, and losses can go to NaN. Use fp16: true, bf16: false.",
            )
        )
    if attn in ATTN_IMPLS_USING_FLASH_LIB and cc in NO_FLASH_ATTENTION:
        problems.append(
            Problem(
                "attn_implementation",
                f"{attn} needs FlashAttention, which has no build for "
                f"{NO_FLASH_ATTENTION[cc]}. Use sdpa.",
            )
        )
    if config.get("deepspeed") and cc == "12.1":
        problems.append(
            Problem(
                "deepspeed",
                "DeepSpeed is not built for the DGX Spark (aarch64, one device): "
                "remove it; 128 GB of unified memory needs no sharding for one GPU.",
            )
        )
    return problems


def image_checks(config: dict[str, Any], hardware: str) -> list[Problem]:
    """The attention backend must be one whose kernels the target's image installs
    (containers/targets.yaml says which, and why the others are missing)."""
    from tuner.containers import TARGETS, load_targets

    available = load_targets().get(hardware, {}).get("attention")
    attn = attention(config)
    if available is None or attn in available:
        return []
    return [
        Problem(
            "attn_implementation",
            f"{attn} has no kernels in the {hardware} image ({TARGETS.name} lists why): "
            f"use one of {', '.join(available)}.",
        )
    ]


def chat_checks(recipe: ComposedRecipe) -> list[Problem]:
    """Training must end each answer with the token the chat template ends an assistant
    turn with, and generation must stop on it (see tuner.chat)."""
    from tuner.chat import chat_format, facts_for
    from tuner.recipes import unknown_tokenizer

    config = recipe.config
    try:
        facts = facts_for(config, recipe.meta, recipe.hardware)
        if facts is None:
            return [Problem("base_model", unknown_tokenizer(str(config.get("base_model"))))]
        chat = chat_format(config, facts)
    except TunerError as err:
        return [Problem("chat_template", str(err))]
    name, end = f"the {chat.template_name} template", chat.end_of_turn
    if facts.tokens and end not in facts.tokens:
        return [
            Problem(
                "chat_template",
                f"{name} ends an assistant turn with {end}, which {facts.model}'s tokenizer "
                f"does not have (its chat tokens: {', '.join(facts.tokens)}). Name a "
                "template built on those, and set special_tokens.eos_token to the token "
                "it ends a turn with.",
            )
        ]
    problems = []
    if chat.eos != end:
        set_by = "special_tokens.eos_token" if chat.eos != facts.eos else "the tokenizer's eos"
        problems.append(
            Problem(
                "special_tokens.eos_token",
                f"training ends each answer with {chat.eos} ({set_by}) and generation stops "
                f"on it, but {name} ends an assistant turn with {end}: the model would not "
                f"learn to stop where its template ends a turn. Set "
                f"special_tokens: {{eos_token: '{end}'}}.",
            )
        )
    eot = config.get("eot_tokens")
    if eot and end not in eot:
        problems.append(
            Problem("eot_tokens", f"{eot} leaves out {end}, the end of turn of {name}.")
        )
    return problems + dataset_chat_checks(config, chat, name)


def dataset_chat_checks(config: dict[str, Any], chat: ChatFormat, name: str) -> list[Problem]:
    """Each dataset keeps the end of turn in the loss, and a hand-written prompt format
    renders the template's user turn."""
    from tuner.chat import user_format

    end = chat.end_of_turn
    opening, generation_prompt = user_format(chat, "{instruction}").split("{instruction}", 1)
    problems = []
    for index, entry in enumerate(config.get("datasets") or []):
        reader = entry.get("type") if isinstance(entry, dict) else None
        where = f"datasets[{index}]"
        if isinstance(reader, str) and reader.startswith("chat_template"):
            for key in ("train_on_eos", "train_on_eot"):
                if entry.get(key) == "none":
                    problems.append(
                        Problem(f"{where}.{key}", f"'none' leaves {end} out of the loss.")
                    )
        if not isinstance(reader, dict):
            continue
        for key in ("format", "no_input_format"):
            written = reader.get(key)
            if written is not None and not (
                written.startswith(opening) and written.endswith(generation_prompt)
            ):
                problems.append(
                    Problem(
                        f"{where}.type.{key}",
                        f"does not render a user turn of {name} "
                        f"({opening + '{instruction}' + generation_prompt!r}). Leave it "
                        "out: the task's tuner.prompt renders it from the template.",
                    )
                )
    return problems


def axolotl_checks(config: dict[str, Any], profile: GpuProfile | None) -> list[Problem]:
    """Axolotl's own `validate_config`, given the target's capabilities instead of this
    machine's (so an A100 config is checked as on an A100, from a laptop)."""
    import torch
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    capabilities = (
        profile.axolotl_capabilities()
        if profile
        else {"bf16": False, "fp8": False, "tf32": False, "n_gpu": 1, "compute_capability": None}
    )
    env_capabilities = {"torch_version": torch.__version__.split("+", maxsplit=1)[0]}
    # Axolotl logs its defaults (kernels auto-enabled, deprecations) at every validation,
    # on loggers it pins to DEBUG: noise in a 50-pair table. Its errors still come back
    # as exceptions.
    logging.disable(logging.WARNING)
    try:
        # Registers the config's plugins, whose keys Axolotl's schema then includes.
        prepare_plugins(DictDefault(_plain(config)))
        validate_config(
            DictDefault(_plain(config)),
            capabilities=capabilities,
            env_capabilities=env_capabilities,
        )
    except Exception as err:
        return [Problem("axolotl", _one_paragraph(err))]
    finally:
        logging.disable(logging.NOTSET)
    return []


def _plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists: validate_config replaces dataset dicts
    by pydantic objects in place."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _one_paragraph(err: Exception) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text.replace(" For further information visit https://errors.pydantic.dev", "")
