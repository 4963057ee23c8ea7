"""Load task recipes and hardware overlays and compose them into one Axolotl config.

Order: `recipes/base.yaml`, then the task, then the hardware overlay, then what the
task requires whatever the machine (`tuner.requires`), then the user's `key=value`
overrides. Mappings merge deeply (the later layer wins); lists and scalars
replace, except Axolotl's `plugins`, which accumulate: a method's plugin joins the
overlay's. Project metadata lives under the reserved key `tuner:` and is stripped
before Axolotl sees the config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import TunerError
from tuner.options import Option, choice, parse_options, positive_int, split_options
from tuner.project import (
    BASE_RECIPE,
    HARDWARE_DIR,
    METHODS_DIR,
    ROOT,
    SHAPES_DIR,
    TASKS_DIR,
    portable,
    run_dir,
)
from tuner.records import (
    Conversation,
    PreferencePair,
    dataset_entry,
    read_records_and_format,
)

META_KEY = "tuner"
DATA_KEY = "data"
DATA_SIZE_KEY = "data_size"
METHOD_KEY = "method"
NODES_KEY = "nodes"


def method_names() -> list[str]:
    return sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))


def yaml_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML: {err}") from None


# Keys of the project's own that every command composing a recipe takes beside Axolotl's.
RECIPE_OPTIONS = {
    DATA_KEY: Option(
        yaml_value,
        None,
        "train on JSONL records instead of the task's datasets (a file, a [list], or a "
        "mixture {a.jsonl: 0.7, b.jsonl: 0.3}): what generate, filter and prefs write",
    ),
    DATA_SIZE_KEY: Option(positive_int, None, "how many records a data= mixture holds"),
    METHOD_KEY: Option(
        # Read as YAML as the other keys are: an experiment's grid writes "prompt-tuning".
        lambda raw: choice(*method_names())(str(yaml_value(raw))),
        None,
        "a training method of recipes/methods/ over the task and the overlay, e.g. "
        "prompt-tuning; the overlay's adapter (LoRA, QLoRA) by default",
    ),
    NODES_KEY: Option(
        positive_int,
        1,
        "machines to train on, each with the overlay's GPUs; the rendezvous comes from "
        "MASTER_ADDR, MASTER_PORT and NODE_RANK in each one's environment",
    ),
}
# Keys of a dataset entry that say where the data comes from; the rest says how to read it.
DATASET_SOURCE_KEYS = ("path", "name", "split", "data_files", "revision", "ds_type")


def task_names() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def hardware_names() -> list[str]:
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TunerError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TunerError(f"{path}: expected a mapping of Axolotl keys, got {type(data).__name__}")
    return data


def _load_named(kind: str, name: str, folder: Path, valid: list[str]) -> dict[str, Any]:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise TunerError(
            f"Unknown {kind} '{name}'. Valid {kind} names: {', '.join(valid)} "
            f"(each is a file in {folder.relative_to(ROOT)}/)."
        )
    return load_yaml(path)


def load_task(name: str) -> dict[str, Any]:
    return _load_named("task", name, TASKS_DIR, task_names())


def load_hardware(name: str) -> dict[str, Any]:
    return _load_named("hardware", name, HARDWARE_DIR, hardware_names())


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A new mapping: `over` merged into `base`; nested mappings merge, Axolotl plugin
    lists accumulate, all else replaces."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        elif key == "plugins" and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *(p for p in value if p not in merged[key])]
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs into a nested mapping. Values are read as YAML (so `lora_r=32` is
    an int, `bf16=false` a bool, `lora_target_modules=[q_proj,v_proj]` a list); dotted
    keys reach into mappings (`tuner.gpu.memory_gib=80`)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise TunerError(
                f"Override '{item}' is not of the form key=value (for example lora_r=32)."
            )
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as err:
            raise TunerError(f"Override '{item}': the value is not valid YAML: {err}") from err
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return overrides


@dataclass
class ComposedRecipe:
    """One task on one machine: the Axolotl config and the project's metadata beside it."""

    task: str
    hardware: str
    config: dict[str, Any]
    meta: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return run_dir(self.task, self.hardware)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables the run needs (e.g. NCCL settings), by the overlay."""
        return {k: str(v) for k, v in (self.meta.get("env") or {}).items()}

    @property
    def starts_from(self) -> str | None:
        return self.meta.get("starts_from")

    @property
    def nodes(self) -> int:
        """Machines the run trains on (`nodes=`), each with the overlay's GPUs."""
        return self.meta.get(NODES_KEY, 1)

    def to_yaml(self) -> str:
        header = (
            f"# Composed by `just config {self.task} {self.hardware}`: recipes/base.yaml + "
            f"recipes/tasks/{self.task}.yaml + recipes/hardware/{self.hardware}.yaml"
        )
        if self.overrides:
            header += " + overrides: " + ", ".join(_flatten_keys(self.overrides))
        header += "\n# Plain Axolotl: `axolotl train` this file from the repository root.\n"
        return header + yaml.dump(
            self.config, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True
        )


class _ConfigDumper(yaml.SafeDumper):
    """Writes multi-line strings (prompt formats) as literal blocks, as a person would."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def _flatten_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += _flatten_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def compose(
    task: str, hardware: str, overrides: list[str] | None = None, formats: bool = True
) -> ComposedRecipe:
    """One task on one machine. `formats=False` leaves instruction/output formats
    unrendered: rendering reads chat templates through Axolotl, which the inference
    environment does not have, and the planner and evaluation read only the model,
    its precision and its sizes."""
    task_cfg = load_task(task)
    hw_cfg = load_hardware(hardware)
    own, axolotl_overrides = split_options(overrides or [], RECIPE_OPTIONS)
    options = parse_options(own, RECIPE_OPTIONS, "recipe option")
    user = parse_overrides(axolotl_overrides)
    data = user_data = options[DATA_KEY]
    data_size = options[DATA_SIZE_KEY]

    # What the task's training method cannot do without (DPO cannot pack samples) holds
    # on every machine, so it goes over the overlay; the user's word still comes last.
    required = (task_cfg.get(META_KEY) or {}).get("requires") or {}
    method = load_yaml(METHODS_DIR / f"{options[METHOD_KEY]}.yaml") if options[METHOD_KEY] else {}
    if method and "adapter" in required:
        raise TunerError(
            f"method={options[METHOD_KEY]}: {task} sets its own adapter "
            f"({required['adapter'] or 'none: every weight trains'}), which it needs."
        )
    merged = load_yaml(BASE_RECIPE)
    for layer in (task_cfg, hw_cfg, method, required, user):
        merged = deep_merge(merged, layer)
    meta = merged.pop(META_KEY, {}) or {}
    config = merged
    meta[NODES_KEY] = options[NODES_KEY]
    if not config.get("adapter") and meta.get("full_weights"):
        # What the machine needs where every weight trains (ZeRO-3 on 4090x8); the
        # user's own keys still win.
        config = deep_merge(
            config, {k: v for k, v in meta["full_weights"].items() if k not in user}
        )

    out = run_dir(task, hardware)
    if data_size is not None and not isinstance(data, dict):
        raise TunerError(f"{DATA_SIZE_KEY}= sizes a mixture: data={{a.jsonl: 0.7, b.jsonl: 0.3}}.")
    if data is not None:
        preference = bool(config.get("rl"))
        if isinstance(data, dict):
            data = mixture_file(data, data_size, preference, out, config.get("seed", 0))
        config["datasets"] = own_datasets(data, preference, trained_roles(task_cfg))
    elif meta.get("data") == "local" and "datasets" not in user:
        config["datasets"] = local_datasets(task, task_cfg)
    if meta.get("starts_from") and "base_model" not in user:
        # The preference stage trains on top of the SFT model of the same machine,
        # its adapter merged (`axolotl merge-lora` writes <output_dir>/merged).
        config["base_model"] = portable(run_dir(meta["starts_from"], hardware) / "merged")
    elif meta.get("model") == "embedded" and "base_model" not in user:
        from tuner.models import embedded_model_dir

        if meta.get("embedded_shape"):
            # From scratch where the embedded model runs: a small shape, its tokenizer.
            config["base_model"] = portable(SHAPES_DIR / meta["embedded_shape"])
            config["tokenizer_config"] = portable(embedded_model_dir())
        else:
            config["base_model"] = portable(embedded_model_dir())

    if config.get("adapter") not in ("lora", "qlora"):
        # Full training (a task that needs it, or adapter=null) or another method: no
        # LoRA settings left over.
        config = {k: v for k, v in config.items() if not k.startswith("lora_")}

    if formats and meta.get("prompt"):
        render_formats(config, meta, hardware)

    config.setdefault("output_dir", portable(out))
    config.setdefault("dataset_prepared_path", portable(out / "prepared"))
    overrides_given = dict(user)
    if user_data is not None:
        overrides_given[DATA_KEY] = user_data
    if data_size is not None:
        overrides_given[DATA_SIZE_KEY] = data_size
    if options[METHOD_KEY]:
        overrides_given[METHOD_KEY] = options[METHOD_KEY]
    if options[NODES_KEY] > 1:
        overrides_given[NODES_KEY] = options[NODES_KEY]
    return ComposedRecipe(task, hardware, config, meta, overrides_given)


def render_formats(config: dict[str, Any], meta: dict[str, Any], hardware: str) -> None:
    """Instruction/output datasets get their Axolotl formats from the chat template the
    config trains with (see tuner.chat). `tuner.prompt` is the user's turn, over the
    columns; `tuner.prompt_with_input`, the same where the row has an input. A format
    the user gives is kept."""
    from tuner.chat import chat_format, facts_for, user_format

    readers = [
        entry["type"]
        for entry in config.get("datasets") or []
        if isinstance(entry, dict) and isinstance(entry.get("type"), dict)
    ]
    if not readers:
        return
    facts = facts_for(config, meta, hardware)
    if facts is None:
        raise TunerError(unknown_tokenizer(str(config.get("base_model"))))
    chat = chat_format(config, facts)
    for reader in readers:
        reader.setdefault("no_input_format", user_format(chat, meta["prompt"]))
        if reader.get("field_input"):
            with_input = meta.get("prompt_with_input", meta["prompt"])
            reader.setdefault("format", user_format(chat, with_input))


def unknown_tokenizer(model: str) -> str:
    return (
        f"base_model {model}: its tokenizer cannot be read here, so its chat template and "
        "end of turn are unknown. Download it once (`hf download "
        f"{model} --include 'tokenizer*'`), or add it to recipes/tokenizers.yaml."
    )


def user_path(name: str) -> Path:
    """A path typed on the command line: relative to where the command runs."""
    return Path(name) if Path(name).is_absolute() else Path.cwd() / name


def mixture_file(weights: dict[str, Any], size: Any, preference: bool, run: Path, seed: int) -> str:
    """Writes the weighted mixture into the run folder and returns its path."""
    from tuner.mixture import write_mixture

    if size is not None and (not isinstance(size, int) or size < 1):
        raise TunerError(f"{DATA_SIZE_KEY}={size}: give a whole number of records.")
    sources = {user_path(str(name)): weight for name, weight in weights.items()}
    schema = PreferencePair if preference else Conversation
    path = run / "mixture.jsonl"
    write_mixture(sources, schema, path, seed, size)
    return str(path)


def trained_roles(task_cfg: dict[str, Any]) -> list[str]:
    """The roles the task's own conversations train on (pretraining learns every turn),
    for conversations given with data=; the answers alone where it does not say."""
    for dataset in task_cfg.get("datasets") or []:
        if dataset.get("type") == "chat_template" and dataset.get("roles_to_train"):
            return list(dataset["roles_to_train"])
    return ["assistant"]


def own_datasets(data: Any, preference: bool, roles: list[str]) -> list[dict[str, Any]]:
    """Dataset entries for files of the project's records, each checked line by line
    first, so a malformed file stops here with its line number and not mid-training.
    Conversations train on `roles`."""
    files = data if isinstance(data, list) else [data]
    if not files or not all(isinstance(f, str) and f for f in files):
        raise TunerError(
            "data= takes a JSONL file, a list of them, or a weighted mixture, e.g. "
            "data=out/prefs.jsonl, data=[a.jsonl,b.jsonl] or data={a.jsonl: 0.7, b.jsonl: 0.3}."
        )
    schema = PreferencePair if preference else Conversation
    entries = []
    for name in files:
        path = user_path(name)
        sharegpt = read_records_and_format(path, schema)[1]
        entries.append(dataset_entry(portable(path), preference, sharegpt, roles))
    return entries


def local_data_files(meta: dict[str, Any]) -> list[str]:
    """`tuner.local_data`: one file, or a list of them, one per dataset of the task."""
    local = meta.get("local_data")
    return list(local) if isinstance(local, list) else [local] if local else []


def local_datasets(task: str, task_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's datasets pointed at its small local JSONL files: how to read each
    (type, fields, roles) comes from the task's dataset in the same place (one file: the
    first dataset), so each local file must have its real dataset's format."""
    files = local_data_files(task_cfg.get(META_KEY) or {})
    datasets = task_cfg.get("datasets") or []
    if not files or not datasets or len(files) > len(datasets):
        raise TunerError(
            f"recipes/tasks/{task}.yaml: the cpu overlay needs `tuner.local_data` (a JSONL "
            "file in the real dataset's format, or a list, one per entry under `datasets`) "
            "and at least as many entries under `datasets`."
        )
    entries = []
    for name, dataset in zip(files, datasets, strict=False):
        path = ROOT / name
        if not path.is_file():
            raise TunerError(
                f"recipes/tasks/{task}.yaml: tuner.local_data names {name}, not found."
            )
        reader = {k: v for k, v in dataset.items() if k not in DATASET_SOURCE_KEYS}
        entries.append({"path": portable(path), "ds_type": "json", "split": "train", **reader})
    return entries
