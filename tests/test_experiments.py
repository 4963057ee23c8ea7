"""Experiments as data: every shipped grid composes, validates and plans on its hardware;
a grid over budget is refused with what to trim; the statistics on data whose answer
is known. The end-to-end run at cpu scale is in test_pretrain.py, beside the training
it shares."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from tuner.cli import main
from tuner.errors import TunerError
from tuner.experiments import spec
from tuner.experiments.criteria import loss_problems
from tuner.experiments.spec import available, expand, load_experiment
from tuner.project import ROOT
from tuner.recipes import compose
from tuner.records import Conversation, read_records
from tuner.significance import aggregate, paired_bootstrap
from tuner.validation import validate

SHIPPED = available()


def test_experiments_are_shipped():
    assert "pure-synthetic" in SHIPPED


def with_input_from_the_cpu_scale(name: str, folder: Path) -> None:
    """The experiment's file in `folder` (spec.EXPERIMENTS_DIR there), its full-scale
    prepare step reading the cpu scale's input: the full-scale one (OpenHermes-2.5) cannot
    be downloaded here, and the real filter runs on the fixtures instead."""
    raw = yaml.safe_load((spec.EXPERIMENTS_DIR / f"{name}.yaml").read_text())
    cpu_input = raw["scales"]["cpu"]["prepare"]["filter"]["input"]
    raw["grid"]["prepare"]["filter"]["input"] = cpu_input
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("name", SHIPPED)
def test_each_grid_composes_validates_and_plans_on_its_hardware_and_scales(
    name, capsys, runs, tmp_path, monkeypatch
):
    experiment, source = load_experiment(name)
    prepare = experiment.grid.prepare
    if prepare is not None and not (ROOT / prepare.filter.input).is_file():
        with_input_from_the_cpu_scale(name, tmp_path)
        monkeypatch.setattr(spec, "EXPERIMENTS_DIR", tmp_path)
        experiment, source = load_experiment(name)
    for hardware in [*experiment.hardware, *experiment.scales]:
        grid = experiment.grid_for(hardware, source)
        # First: planning runs the prepare step, whose files the cells train on.
        main(["experiment", name, hardware, "plan=true"])
        printed = capsys.readouterr().err
        cells = {run.cell: run for run in expand(name, experiment.task, hardware, grid, [])}
        for cell, run in cells.items():
            report = validate(compose(experiment.task, hardware, run.overrides))
            assert report.ok, (name, hardware, cell, report.summary())
        assert f"{name} on {hardware}: {len(cells)} cells × {len(grid.seeds)} seeds" in printed
        assert all(cell in printed for cell in cells)
        timed = "no throughput to time them with" if hardware == "cpu" else "machine-hours"
        assert timed in printed, printed
        if grid.prepare is not None:
            assert "prepare: just filter" in printed
            for size in grid.prepare.filter.tiers:
                tier = runs / "experiments" / name / "prepared" / f"top-{size}.jsonl"
                assert 0 < len(read_records(tier, Conversation)) <= size
    if prepare is not None:
        # Prepared already, for the last machine: not filtered again.
        main(["experiment", name, hardware, "plan=true"])
        assert "is up to date with" in capsys.readouterr().err


def test_a_prepare_step_whose_input_is_missing_is_refused_with_where_to_get_it(capsys, runs):
    with pytest.raises(SystemExit) as stopped:
        main(["experiment", "quality-vs-quantity", "4090x8", "plan=true"])
    assert stopped.value.code == 2
    printed = " ".join(capsys.readouterr().err.split())
    assert "prepare.filter.input names" in printed and "openhermes-2.5.jsonl" in printed
    assert '"Data to prepare"' in printed
    assert not (runs / "experiments").exists()


def test_a_grid_over_its_budget_is_refused_with_each_variables_share(capsys, runs):
    # Three epochs triple the nine runs' 11.5 hours, past the 15-hour, $50 budget.
    with pytest.raises(SystemExit) as stopped:
        main(["experiment", "pure-synthetic", "4090x8", "num_epochs=3"])
    assert stopped.value.code == 2
    printed = " ".join(capsys.readouterr().err.split())
    assert "over budget on 4090x8" in printed and "against a budget of $50.00" in printed
    assert "variable size (hours per value): 125m" in printed and "seeds: 3" in printed
    assert "Trim a variable's values or the seeds" in printed
    assert not (runs / "experiments").exists()


def test_an_experiment_for_another_machine_or_with_a_wrong_comparison_is_refused(
    tmp_path, monkeypatch
):
    with pytest.raises(TunerError, match="sized for 4090x8, cpu, not a100"):
        experiment, source = load_experiment("pure-synthetic")
        experiment.grid_for("a100", source)
    (tmp_path / "broken.yaml").write_text(
        "description: d\ntask: pretrain\nhardware: [cpu]\ngrid:\n"
        "  variables: {size: {tiny: {}}}\n  seeds: [1]\n  metrics: [m/x]\n"
        "  comparisons: [{variable: size, a: tiny, b: huge, metric: m/x}]\n"
    )
    monkeypatch.setattr(spec, "EXPERIMENTS_DIR", tmp_path)
    with pytest.raises(TunerError, match=r"broken.yaml: grid: .*size=huge; its values are tiny"):
        load_experiment("broken")
    (tmp_path / "slashed.yaml").write_text(
        "description: d\ntask: pretrain\nhardware: [cpu]\ngrid:\n"
        "  variables: {size: {a/b: {}}}\n  seeds: [1]\n  metrics: [m/x]\n"
    )
    with pytest.raises(TunerError, match=r"slashed.yaml: grid: .*'a/b' names a folder"):
        load_experiment("slashed")


def test_a_shift_is_found_significant_and_no_shift_is_not():
    rng = np.random.default_rng(1)
    units = []
    for _ in range(3):
        a = rng.normal(0.5, 0.2, size=200)
        units.append((a, a + 0.1 + rng.normal(0, 0.05, size=200)))
    observed, resampled = paired_bootstrap("accuracy", units, pairs=False, resamples=500)
    assert observed == pytest.approx(0.1, abs=0.02)
    assert np.count_nonzero(np.abs(resampled - observed) >= abs(observed)) == 0
    same = [(a, a.copy()) for a, _ in units]
    observed, resampled = paired_bootstrap("accuracy", same, pairs=False, resamples=500)
    assert observed == 0 and np.all(resampled == 0)


def test_a_corpus_perplexity_is_computed_from_the_summed_log_likelihoods():
    pairs = np.array([[-20.0, 10.0], [-5.0, 5.0]])
    assert aggregate("word_perplexity", pairs, pairs=True) == pytest.approx(math.exp(25 / 15))
    bits = 25 / 15 / math.log(2)
    assert aggregate("bits_per_byte", pairs, pairs=True) == pytest.approx(bits)
    assert aggregate("wikitext/bits_per_byte", pairs, pairs=True) == pytest.approx(bits)


def test_a_nan_and_a_spike_in_the_training_loss_are_found_and_a_steady_fall_is_not():
    falling = [10.0 - 0.2 * step for step in range(30)]
    assert loss_problems(falling) == []
    spiked = [*falling[:20], 16.0, *falling[21:]]
    assert loss_problems(spiked) == ["spike to 16 at logged step 21 (median 7.1)"]
    assert loss_problems([*falling[:5], math.nan]) == ["loss nan at logged step 6"]
