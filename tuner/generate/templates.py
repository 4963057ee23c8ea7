"""What steers generation, read from the user-editable files in `generate/`: the Magpie
pre-query template of each model family, the persona of each task and the named
generation presets."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tuner.errors import TunerError
from tuner.project import ROOT

GENERATE_DIR = ROOT / "generate"


class Family(BaseModel):
    """A model family's chat template, as far as Magpie needs it."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    matches: list[str]
    system: str | None
    pre_query: str
    user_turn: str
    stop: list[str]

    @property
    def has_system_turn(self) -> bool:
        return self.system is not None

    def system_prompt(self, persona: str) -> str | None:
        """The family's default system prompt with the task's persona appended."""
        if not self.has_system_turn:
            return None
        if not self.system:
            return persona
        joint = "" if self.system.endswith((".", "!", "?")) else "."
        return f"{self.system}{joint} {persona}".strip()

    def instruction_prompt(self, persona: str) -> str:
        return self.pre_query.replace("{system}", self.system_prompt(persona) or "")


class Sampling(BaseModel):
    """The subset of vLLM's SamplingParams that presets set (the fallback reads it too)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    repetition_penalty: float = 1.0


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instruction: Sampling
    response: Sampling
    turns: int = 1
    checkpoint_every: int = 100
    keep_truncated: bool = False
    compile: bool = True


def _load(name: str) -> dict[str, Any]:
    path = GENERATE_DIR / name
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as problem:
        raise TunerError(f"{path}: cannot be read ({problem}).") from problem
    if not isinstance(data, dict):
        raise TunerError(f"{path}: expected a mapping of names to entries.")
    return data


def _parse(file: str, name: str, schema: type[BaseModel], data: Any) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as problem:
        raise TunerError(f"{GENERATE_DIR / file}: entry '{name}' is invalid: {problem}") from None


@cache
def families() -> dict[str, Family]:
    return {
        name: _parse("templates.yaml", name, Family, {**entry, "name": name})
        for name, entry in _load("templates.yaml").items()
    }


def family_for(model: str, override: str | None = None) -> Family:
    """The family named by `override`, else the first whose `matches` occur in the model's
    name or path (read from its config.json's name when it is a local folder)."""
    known = families()
    if override:
        if override not in known:
            raise TunerError(
                f"Unknown template family '{override}'. Known: {', '.join(known)} "
                f"(generate/templates.yaml)."
            )
        return known[override]
    haystack = model.lower()
    config = Path(model) / "config.json"
    if config.is_file():
        haystack += " " + config.read_text().lower()[:4000]
    for family in known.values():
        if any(pattern in haystack for pattern in family.matches):
            return family
    raise TunerError(
        f"No Magpie template matches the model '{model}'. Name one with template=FAMILY "
        f"({', '.join(known)}), or add the family to generate/templates.yaml."
    )


def persona(task: str) -> str:
    personas = _load("personas.yaml")
    if task not in personas:
        raise TunerError(
            f"No persona for the task '{task}' in generate/personas.yaml. "
            f"Known: {', '.join(personas)}."
        )
    return str(personas[task])


def preset(name: str) -> Preset:
    presets = _load("presets.yaml")
    if name not in presets:
        raise TunerError(
            f"Unknown generation preset '{name}'. Known: {', '.join(presets)} "
            "(generate/presets.yaml)."
        )
    return _parse("presets.yaml", name, Preset, presets[name])
