"""An experiment as data (`experiments/NAME.yaml`): one task recipe, a grid of variables
whose values are overrides of it, seeds, the metrics to report, the comparisons to test
and a budget. The full-scale grid is written for its hardware; a `scales:` entry per
other machine (cpu) replaces any of the grid's fields, so that the same experiment runs
there small.

A run is a cell (one value of every variable) at one seed. Its overrides are, in order:
the grid's, each variable's value's, `seed=S`, then the command line's."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuner.errors import TunerError, validation_problems
from tuner.experiments.criteria import Criteria
from tuner.project import ROOT, portable, run_name, runs_dir
from tuner.recipes import load_yaml

EXPERIMENTS_DIR = ROOT / "experiments"
PREPARED = "{prepared}"
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Machine-hours on the hardware (all its GPUs together) and dollars at its price.
    hours: float | None = Field(default=None, gt=0)
    usd: float | None = Field(default=None, gt=0)


class Comparison(BaseModel):
    """Value `b` of `variable` against value `a`, on one metric (`TASK/METRIC`), paired
    over the seeds and the other variables' values."""

    model_config = ConfigDict(extra="forbid")

    variable: str
    a: str
    b: str
    metric: str


class FilterStep(BaseModel):
    """`just filter INPUT tiers=…` before the grid, into the experiment's `prepared/`
    folder: the top-K kept records by quality score, `top-K.jsonl` per size, which the
    grid's values name as `{prepared}/top-K.jsonl`."""

    model_config = ConfigDict(extra="forbid")

    # Conversations as the project's JSONL: a file or a comma list, from the repository root.
    input: str
    tiers: list[int] = Field(min_length=1)
    # filter/presets/NAME.yaml
    preset: str = "default"

    @model_validator(mode="after")
    def tiers_are_sizes(self) -> FilterStep:
        if any(size < 1 for size in self.tiers):
            raise ValueError(f"tiers are record counts of at least 1, not {self.tiers}")
        return self


class Prepare(BaseModel):
    """Data the grid's runs need, made once before it is planned."""

    model_config = ConfigDict(extra="forbid")

    filter: FilterStep


class Correlations(BaseModel):
    """The validity study's question (tuner/experiments/validity.py): how well each
    zero-cost metric ranks the grid's models as each costly one does."""

    model_config = ConfigDict(extra="forbid")

    zero_cost: list[str] = Field(min_length=1)
    costly: list[str] = Field(min_length=1)


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # What this scale is, printed under the description (a cpu scale: what it stands for).
    note: str | None = None

    # variable → value name → the overrides that value stands for.
    variables: dict[str, dict[str, dict[str, Any]]] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    # TASK/METRIC as lm-eval names them, e.g. tuner_perplexity_chat/word_perplexity;
    # the correlations' metrics are reported too, without being listed here.
    metrics: list[str] = []
    overrides: dict[str, Any] = {}
    # `just eval` options every cell is evaluated with (limit, backend, variant).
    eval: dict[str, Any] = {}
    comparisons: list[Comparison] = []
    criteria: Criteria = Criteria()
    correlations: Correlations | None = None
    budget: Budget = Budget()
    prepare: Prepare | None = None
    # Each trained run also generating with transformers at batch size 1, timed: its
    # tokens/s beside the training costs in the report (tuner/inference_speed.py).
    measure_inference: bool = False

    @property
    def reported_metrics(self) -> list[str]:
        """`metrics`, then those of the correlations not among them."""
        correlated = (
            [*self.correlations.zero_cost, *self.correlations.costly] if self.correlations else []
        )
        return list(dict.fromkeys([*self.metrics, *correlated]))

    @model_validator(mode="after")
    def comparisons_name_values(self) -> Grid:
        for variable, values in self.variables.items():
            for name in (variable, *values):
                if not FOLDER_NAME.fullmatch(name):
                    raise ValueError(
                        f"'{name}' names a folder of each run: use letters, digits, '.', '-' "
                        "or '_' only"
                    )
        for comparison in self.comparisons:
            values = self.variables.get(comparison.variable)
            if values is None:
                raise ValueError(f"comparison over '{comparison.variable}', not a variable")
            for side in (comparison.a, comparison.b):
                if side not in values:
                    raise ValueError(
                        f"comparison names {comparison.variable}={side}; its values are "
                        f"{', '.join(values)}"
                    )
        if not self.reported_metrics:
            raise ValueError("metrics: name at least one TASK/METRIC to report")
        for metric in [*self.criteria.below, *self.criteria.above]:
            if metric not in self.reported_metrics:
                raise ValueError(f"criteria name {metric}, which is not among the metrics")
        return self


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str
    task: str
    # The hardware the full-scale grid is sized for.
    hardware: list[str] = Field(min_length=1)
    # Definitions the grid repeats, as YAML anchors (`&name`, then `<<: *name`); read
    # only through them.
    sources: dict[str, Any] = {}
    grid: Grid
    # hardware → the fields of the grid it replaces.
    scales: dict[str, dict[str, Any]] = {}

    def grid_for(self, hardware: str, source: Path) -> Grid:
        if hardware in self.scales:
            try:
                return Grid.model_validate({**self.grid.model_dump(), **self.scales[hardware]})
            except ValidationError as err:
                raise TunerError(
                    f"{source}: scales.{hardware}: {validation_problems(err, 'experiment')}"
                ) from None
        if hardware not in self.hardware:
            machines = ", ".join([*self.hardware, *self.scales])
            raise TunerError(
                f"{source} is sized for {machines}, not {hardware}: add a "
                f"`scales: {{{hardware}: …}}` entry for it, or run it on one of those."
            )
        return self.grid


@dataclass(frozen=True)
class Run:
    """One cell at one seed: the runs folder it trains and evaluates in (`folder`,
    TUNER_RUNS while it runs) and the run folder `TASK-HW/` there (`run_dir`)."""

    cell: str
    values: dict[str, str]
    seed: int
    overrides: list[str]
    folder: Path
    run_dir: Path

    @property
    def key(self) -> tuple[str, int]:
        return (self.cell, self.seed)

    def results_path(self, task: str, grid: Grid) -> Path:
        """The tuned model's results of the grid's evaluation (`eval: {suite: …}`, or
        the task's own suite)."""
        from tuner.evaluate.run import eval_folder, task_suite

        suite = grid.eval.get("suite") or task_suite(task)
        return eval_folder(self.run_dir, task, suite) / "tuned" / "results.json"


def available() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def load_experiment(name: str) -> tuple[Experiment, Path]:
    path = EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise TunerError(
            f"No experiment '{name}' in experiments/. Known: {', '.join(available())}."
        )
    try:
        return Experiment.model_validate(load_yaml(path)), path
    except ValidationError as err:
        raise TunerError(f"{path}: {validation_problems(err, 'experiment')}") from None


def as_overrides(values: dict[str, Any]) -> list[str]:
    """Overrides as the command line takes them; JSON is YAML, so every value reads back
    as it was written."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def experiment_dir(name: str) -> Path:
    return runs_dir() / "experiments" / name


def prepared_dir(name: str) -> Path:
    """Where the prepare step writes; `{prepared}` in the grid's values."""
    return experiment_dir(name) / "prepared"


def with_prepared(value: Any, folder: str) -> Any:
    """`value` with `{prepared}` in its strings replaced by `folder`."""
    if isinstance(value, str):
        return value.replace(PREPARED, folder)
    if isinstance(value, dict):
        return {k: with_prepared(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [with_prepared(v, folder) for v in value]
    return value


def cell_name(values: dict[str, str]) -> str:
    return "_".join(f"{variable}-{value}" for variable, value in values.items())


def expand(name: str, task: str, hardware: str, grid: Grid, extra: list[str]) -> list[Run]:
    """Every cell at every seed, in the grid's order (seeds innermost)."""
    names = list(grid.variables)
    runs = []
    for combination in itertools.product(*(grid.variables[n] for n in names)):
        values = dict(zip(names, combination, strict=True))
        cell = cell_name(values)
        overrides = dict(grid.overrides)
        for variable, value in values.items():
            overrides |= grid.variables[variable][value]
        overrides = with_prepared(overrides, portable(prepared_dir(name)))
        for seed in grid.seeds:
            folder = experiment_dir(name) / cell / f"seed-{seed}"
            with_seed = as_overrides(overrides | {"seed": seed}) + extra
            run_dir = folder / run_name(task, hardware)
            runs.append(Run(cell, values, seed, with_seed, folder, run_dir))
    return runs
