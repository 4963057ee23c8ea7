"""What publishing to the Hugging Face Hub needs, for models (`just publish`) and for
datasets (`just publish-data`): repository ids, hub ids of the models used, the
licenses of base and generator models, and the upload with HF_TOKEN from the
environment, which is never printed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from rich.console import Console

from tuner.errors import TunerError
from tuner.models import EMBEDDED, EMBEDDED_HUB_ID, embedded_model_dir
from tuner.options import Option, choice
from tuner.project import RECIPES, local_path

LICENSES = RECIPES / "licenses.yaml"
LICENSE_IDS = "https://huggingface.co/docs/hub/repositories-licenses"


def hub_repo(raw: str) -> str:
    """An option's value as a Hub repository id, ORG/NAME."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(raw)
    except HFValidationError as problem:
        raise ValueError(str(problem).split("\n")[0]) from None
    if raw.count("/") != 1:
        raise ValueError("give the organisation or user and the name, ORG/NAME")
    return raw


PRIVATE = Option(choice("true", "false"), "false", "create the repository as private")


def hub_id(model: str) -> str | None:
    """A model as the Hub names it: a hub id as it is, the embedded default by the id
    of the model its GGUF was made from; None for another local folder."""
    path = local_path(model)
    if model == EMBEDDED or Path(path) == embedded_model_dir().resolve():
        return EMBEDDED_HUB_ID
    return None if path != model or model.startswith("/") else model


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder to write the repository's files in, beside `out`, which replaces `out`
    once the block completes: a failure leaves the last complete folder, or none."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)


def known_license(model: str | None) -> str | None:
    """The license recipes/licenses.yaml gives the model; None where it gives none."""
    return yaml.safe_load(LICENSES.read_text()).get(model) if model else None


def license_needed(what: str) -> TunerError:
    return TunerError(
        f"{what}. Give one: license=apache-2.0 (or another Hub license id, {LICENSE_IDS})."
    )


def upload(
    folder: Path, repo: str, repo_type: str, private: bool, message: str, console: Console
) -> str | None:
    """The folder uploaded to the Hub with HF_TOKEN; None, and how to, without it."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        kind = " --repo-type dataset" if repo_type == "dataset" else ""
        console.print(
            f"Not uploaded: no HF_TOKEN in the environment. Set it (a write token from "
            f"https://huggingface.co/settings/tokens) and run this again, or upload the "
            f"folder yourself: `hf upload{kind} {repo} {folder} .`",
            markup=False,
        )
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo, repo_type=repo_type, folder_path=folder, commit_message=message
        )
    except (HfHubHTTPError, OSError) as problem:
        raise TunerError(
            f"Uploading {folder} to {repo} failed ({type(problem).__name__}: "
            f"{str(problem).splitlines()[0] if str(problem) else 'no message'}). The folder "
            "is kept; run this again."
        ) from None
    return str(url)
