"""Training seeds of one task on one machine, `seeds=N` of `just train` and `just eval`.

The first seed is the config's own (`seed:`, 42 in recipes/base.yaml, or the user's
`seed=`), trained in the ordinary run folder `runs/TASK-HW/`, so that a single-seed
user never meets this; seed S after it trains in `runs/seeds/seed-S/TASK-HW/`. Every
seed's run is an ordinary run folder (config, checkpoints, manifest, eval/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuner.options import Option, positive_int
from tuner.project import run_name, runs_dir

SEEDS_KEY = "seeds"
SEEDS_OPTIONS = {
    SEEDS_KEY: Option(
        positive_int,
        1,
        "N training runs, at the config's seed (runs/TASK-HW/) and the "
        "N-1 after it (runs/seeds/seed-S/TASK-HW/); eval compares their mean with the "
        "base, the spread between seeds in its errors and p-values",
    )
}


@dataclass(frozen=True)
class SeedRun:
    """One seed's run: the runs folder it lives in (TUNER_RUNS while it runs)."""

    seed: int
    folder: Path
    first: bool

    def run_dir(self, task: str, hardware: str) -> Path:
        return self.folder / run_name(task, hardware)


def seed_runs(first: int, count: int) -> list[SeedRun]:
    """The runs of `count` seeds from `first` on."""
    runs = [SeedRun(first, runs_dir(), True)]
    for seed in range(first + 1, first + count):
        runs.append(SeedRun(seed, runs_dir() / "seeds" / f"seed-{seed}", False))
    return runs
