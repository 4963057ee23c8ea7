"""The zero-cost validity study (tuner/experiments/validity.py): rank correlations over
models on scores whose answer is known, and the study run end to end through `just
experiment` on three tiny-model fine-tunes, one correlation and its interval recomputed
here from the runs' own results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy.stats import spearmanr

from tuner.cli import main
from tuner.errors import TunerError
from tuner.experiments import spec
from tuner.experiments.validity import correlate
from tuner.significance import LEVEL, RESAMPLES


def scored(values: list[float], higher_is_better: bool = True) -> dict:
    return {
        "value": float(np.mean(values)),
        "higher_is_better": higher_is_better,
        "per_sample": {str(i): v for i, v in enumerate(values)},
    }


def test_a_metric_correlates_fully_with_itself_and_against_its_reverse():
    """Four models answering five documents: accuracy, its loss (lower is better, so
    oriented it agrees), and a metric ranking the models backwards."""
    accuracy = [[0, 0, 1, 0, 0], [1, 0, 1, 0, 0], [1, 1, 1, 0, 1], [1, 1, 1, 1, 1]]
    models = [
        {
            "a/acc": scored(row),
            "a/loss": scored([1 - v for v in row], higher_is_better=False),
            "b/backwards": scored([1 - v for v in row]),
        }
        for row in accuracy
    ]
    found = {
        (r.zero_cost, r.costly): r
        for r in correlate(["a/loss", "b/backwards"], ["a/acc"], models, 0)
    }
    same = found[("a/loss", "a/acc")]
    assert (same.rho, same.low, same.high, same.models) == (1.0, 1.0, 1.0, 4)
    assert same.verdict.startswith("stands in")
    reverse = found[("b/backwards", "a/acc")]
    assert reverse.rho == -1.0 and reverse.verdict == "ranks the models the other way"
    for model in models:
        model["c/constant"] = scored([0.0] * 5)
    [flat] = correlate(["c/constant"], ["a/acc"], models, 0)
    assert flat.tied and flat.verdict.startswith("cannot tell")
    with pytest.raises(TunerError, match="at least 3 models"):
        correlate(["a/loss"], ["a/acc"], models[:2], 0)


TINY_STUDY = {
    "description": "three tiny fine-tunes, scored by the instruction suite",
    "task": "instruction",
    "hardware": ["cpu"],
    "grid": {
        "variables": {
            "lr": {
                "1e-4": {"learning_rate": 1e-4},
                "1e-2": {"learning_rate": 1e-2},
                "3e-1": {"learning_rate": 0.3},
            }
        },
        "seeds": [1],
        "overrides": {"max_steps": 2},
        "eval": {"limit": 3, "backend": "hf"},
        "measure_inference": True,
        "correlations": {
            "zero_cost": ["tuner_perplexity_instruction/word_perplexity"],
            "costly": [
                "tuner_ifeval/distinct_1",
                "tuner_perplexity_instruction/word_perplexity",
            ],
        },
    },
}


@pytest.mark.slow
def test_the_study_reports_each_correlation_with_its_interval_and_a_heatmap(
    tiny_model, runs, tmp_path, monkeypatch, capsys
):
    (tmp_path / "tiny-study.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    monkeypatch.setattr(spec, "EXPERIMENTS_DIR", tmp_path)
    main(["experiment", "tiny-study", "cpu", f"base_model={tiny_model}"])
    folder = runs / "experiments" / "tiny-study"
    results = json.loads((folder / "results.json").read_text())
    found = {(r["zero_cost"], r["costly"]): r for r in results["correlations"]}
    perplexity, diversity = (
        "tuner_perplexity_instruction/word_perplexity",
        "tuner_ifeval/distinct_1",
    )
    # A metric ranks the models as it does itself (a resample in which the three tie
    # ranks nothing, ρ 0: hence no bound on the interval's low end).
    itself = found[(perplexity, perplexity)]
    assert (itself["rho"], itself["high"]) == (1.0, 1.0)

    # Perplexity against the diversity of the IFEval answers, again from each run's
    # results.json: ρ over the three models, then the interval, one resample at a time
    # (the module's draws: uniforms from the seed, scaled to the count of documents).
    # distinct-1 is one number per model, the same in every resample.
    models = []
    for cell in ("lr-1e-4", "lr-1e-2", "lr-3e-1"):
        run = folder / cell / "seed-1" / "instruction-cpu"
        tasks = json.loads((run / "eval" / "tuned" / "results.json").read_text())["tasks"]
        models.append(
            (
                tasks["tuner_perplexity_instruction"]["metrics"]["word_perplexity"],
                tasks["tuner_ifeval"]["metrics"]["distinct_1"]["value"],
            )
        )
    pair = found[(perplexity, diversity)]
    distinct = [d for _, d in models]
    rho = spearmanr([-p["value"] for p, _ in models], distinct).statistic
    assert pair["rho"] == pytest.approx(0.0 if np.isnan(rho) else rho)
    docs = sorted(models[0][0]["per_sample_pairs"], key=str)
    draws = np.random.default_rng(0).random((RESAMPLES, len(docs)))
    spread = []
    for row in draws:
        picked = [docs[int(u * len(docs))] for u in row]
        ppl = []
        for p, _ in models:
            ll = sum(p["per_sample_pairs"][d][0] for d in picked)
            words = sum(p["per_sample_pairs"][d][1] for d in picked)
            ppl.append(-np.exp(-ll / words))
        r = spearmanr(ppl, distinct).statistic
        spread.append(0.0 if np.isnan(r) else r)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(spread, [tail, 1 - tail])
    assert (pair["low"], pair["high"]) == (pytest.approx(low), pytest.approx(high))

    report = (folder / "report.md").read_text()
    assert "## Zero-cost metrics against the costly ones" in report and "### Conclusion" in report
    # Each run timed generating (inference.json), its rate in the training table.
    for cell in ("lr-1e-4", "lr-1e-2", "lr-3e-1"):
        run = folder / cell / "seed-1" / "instruction-cpu"
        rate = json.loads((run / "inference.json").read_text())["tokens_per_second"]
        training = report[report.index("## Training") :].splitlines()
        [row] = [line for line in training if line.startswith(f"| {cell} | ")]
        assert row.split(" | ")[5] == f"{rate:.4g}"
    assert (folder / "correlations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
