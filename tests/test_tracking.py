"""Which trackers a training reports to, from the environment (the trainings that
really log to them are in test_plumbing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infer_env import infer_json
from tuner.errors import TunerError
from tuner.tracking import chosen_trackers, tracker_run_name

RUN = Path("/data/runs/math-a100")
TENSORBOARD = {"use_tensorboard": True}


def test_without_tracker_variables_only_tensorboard_logs_and_w_and_b_stays_off():
    trackers = chosen_trackers(TENSORBOARD, RUN, {})
    assert trackers.names == ("tensorboard",) and trackers.axolotl_args == []
    assert trackers.env_defaults == {"WANDB_MODE": "disabled"}


def test_a_w_and_b_key_turns_it_on_under_the_users_project_or_the_projects_own():
    env = {"WANDB_API_KEY": "k"}
    trackers = chosen_trackers(TENSORBOARD, RUN, env)
    assert trackers.names == ("tensorboard", "wandb") and trackers.env_defaults == {}
    assert trackers.axolotl_args == ["--wandb-project=llm-tuner", "--wandb-name=math-a100"]
    named = chosen_trackers(TENSORBOARD, RUN, {**env, "WANDB_PROJECT": "mine"}).axolotl_args
    assert named[0] == "--wandb-project=mine"
    # Keys the user set in the config stay theirs, and the key itself never is an argument.
    own = chosen_trackers({"wandb_project": "p", "wandb_name": "n"}, RUN, env)
    assert own.names == ("wandb",) and own.axolotl_args == []


def test_seeds_and_experiment_cells_get_names_that_tell_them_apart():
    assert tracker_run_name(Path("/r/seeds/seed-43/math-a100")) == "seeds/seed-43/math-a100"
    cell = Path("/r/experiments/mix/weights-a/seed-1/pretrain-cpu")
    assert tracker_run_name(cell) == "experiments/mix/weights-a/seed-1/pretrain-cpu"
    assert tracker_run_name(Path("/home/me/runs/math-t4")) == "math-t4"


def test_an_mlflow_uri_without_mlflow_installed_is_refused_with_what_to_do():
    """In the inference environment, which has no mlflow."""
    refusal = infer_json(
        "import json; from pathlib import Path\n"
        "from tuner.errors import TunerError\n"
        "from tuner.tracking import chosen_trackers\n"
        "try:\n"
        "    chosen_trackers({}, Path('runs/x'), {'MLFLOW_TRACKING_URI': 'http://mlflow:5000'})\n"
        "except TunerError as refused:\n"
        "    print(json.dumps(str(refused)))\n"
    )
    assert "no mlflow" in refusal and "pip install mlflow-skinny" in refusal


def test_an_mlflow_folder_is_refused_unless_mlflow_is_told_to_allow_it():
    """MLflow 3 raises for its file store only once training has begun."""
    folder = {"MLFLOW_TRACKING_URI": "file:///data/mlruns"}
    with pytest.raises(TunerError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        chosen_trackers(TENSORBOARD, RUN, folder)
    allowed = chosen_trackers(TENSORBOARD, RUN, {**folder, "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert allowed.names == ("tensorboard", "mlflow")
    assert allowed.axolotl_args == [
        "--mlflow-experiment-name=llm-tuner",
        "--mlflow-run-name=math-a100",
    ]
    server = chosen_trackers(TENSORBOARD, RUN, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert server.names == ("tensorboard", "mlflow")
