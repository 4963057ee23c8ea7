"""The chat format a run trains with, and the end of turn that training, the saved
template and generation must agree on.

A model learns to stop by being trained on the token that ends an assistant turn.
Serving renders turns with the chat template saved with the run and stops on the
tokenizer's eos. So three things must name the same token:
- what Axolotl trains after each answer: the tokenizer's eos for instruction/output
  columns, `eot_tokens` (by default the eos) for conversations;
- what the saved chat template writes after an assistant message;
- what generation stops on: the saved tokenizer's eos.

A base model's eos ends a document, not a turn. Qwen2.5-7B's is `<|endoftext|>`, but
ChatML ends a turn with `<|im_end|>`. Trained as it comes, such a model never learns to
stop where its template says the turn ends. `special_tokens.eos_token` makes the two
the same.

Formats for instruction/output columns are rendered here from the chat template, not
written by hand. The user turn, the default system prompt and the generation prompt
are then exactly what serving renders, for whatever family `base_model` names.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import TunerError
from tuner.manifest import sha256_text
from tuner.project import RECIPES, ROOT

TOKENIZERS = RECIPES / "tokenizers.yaml"
# Axolotl's name for "the template the tokenizer ships".
OWN_TEMPLATE = "tokenizer_default"
# Where `chat_template:` names in recipes/tokenizers.yaml point: library → folder.
TEMPLATE_LIBRARIES = {"trl": "chat_templates", "axolotl": "utils/chat_templates/templates"}
# Llama 3.1's templates print a date; 3.2's default to today's. The date they fall back
# on keeps a composed config the same from one day to the next (a run resumes only
# under the config it started with).
TEMPLATE_DATE = "26 Jul 2024"
# Stand-ins rendered through a template to find where each part of a turn goes.
USER_MARK = "\x00USER\x00"
ANSWER_MARK = "\x00ANSWER\x00"


@dataclass(frozen=True)
class TokenizerFacts:
    """What a model's tokenizer says about turns, wherever it was read from."""

    model: str
    eos: str
    bos: str | None
    tokens: tuple[str, ...]
    chat_template: str | None
    source: str


@dataclass(frozen=True)
class ChatFormat:
    """The chat format of a composed config, as training and serving will see it."""

    template_name: str
    template: str
    end_of_turn: str
    eos: str
    facts: TokenizerFacts

    @property
    def template_sha256(self) -> str:
        return sha256_text(self.template)


@functools.cache
def known_tokenizers() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(TOKENIZERS.read_text()) or {}


def library_template(reference: str) -> str:
    """The text of `trl/qwen2_5`-style references: a chat template a library ships."""
    library, _, name = reference.partition("/")
    if library not in TEMPLATE_LIBRARIES or not name:
        raise TunerError(
            f"{TOKENIZERS.relative_to(ROOT)}: chat_template '{reference}' must be "
            f"LIBRARY/NAME with LIBRARY one of {', '.join(TEMPLATE_LIBRARIES)}."
        )
    path = importlib.resources.files(library) / TEMPLATE_LIBRARIES[library] / f"{name}.jinja"
    if not path.is_file():
        raise TunerError(f"{TOKENIZERS.relative_to(ROOT)}: {library} ships no {name}.jinja.")
    return path.read_text()


def folder_facts(folder: Path) -> TokenizerFacts:
    """From a tokenizer on disk: a local model, a run, or a Hugging Face cache snapshot.
    Read again when its files change (a run folder gets a new tokenizer per run)."""
    stamps = tuple(path.stat().st_mtime_ns for path in sorted(folder.glob("tokenizer*")))
    return _folder_facts(folder, stamps)


@functools.cache
def _folder_facts(folder: Path, stamps: tuple[int, ...]) -> TokenizerFacts:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tokenizer("x")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return TokenizerFacts(
        model=str(folder),
        eos=tokenizer.eos_token,
        bos=tokenizer.bos_token if adds_bos else None,
        tokens=tuple(sorted(special)),
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        source=str(folder),
    )


def hub_cache_folder(model: str) -> Path | None:
    """The downloaded snapshot of a hub model's tokenizer, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "tokenizer_config.json")
    return Path(found).parent if isinstance(found, str) else None


def tokenizer_facts(model: str) -> TokenizerFacts | None:
    """A local folder's own files, else the Hugging Face cache, else the table; None
    when none of them knows the model."""
    folder = Path(model) if Path(model).is_absolute() else ROOT / model
    if (folder / "tokenizer_config.json").is_file():
        return folder_facts(folder.resolve())
    cached = hub_cache_folder(model) if "/" in model and not model.startswith(".") else None
    if cached is not None:
        return folder_facts(cached)
    entry = known_tokenizers().get(model)
    if entry is None:
        return None
    reference = entry.get("chat_template")
    return TokenizerFacts(
        model=model,
        eos=entry["eos"],
        bos=entry.get("bos"),
        tokens=tuple(entry.get("tokens") or ()),
        chat_template=library_template(reference) if reference else None,
        source=f"{TOKENIZERS.relative_to(ROOT)} ({reference or 'no template of its own'})",
    )


def template_for(config: dict[str, Any], facts: TokenizerFacts) -> tuple[str, str]:
    """The template name the config selects and its text, as Axolotl resolves them."""
    name = str(config.get("chat_template") or OWN_TEMPLATE)
    if name == "jinja":
        text = config.get("chat_template_jinja")
        if not text:
            raise TunerError("chat_template: jinja needs chat_template_jinja, the template text.")
        return name, str(text)
    if name == OWN_TEMPLATE:
        if facts.chat_template is None:
            raise TunerError(
                f"chat_template: {OWN_TEMPLATE}, but {facts.model}'s tokenizer has no chat "
                f"template ({facts.source}). Name one, e.g. chat_template: chatml."
            )
        return name, facts.chat_template
    from axolotl.utils.chat_templates import get_chat_template

    try:
        return name, get_chat_template(name)
    except ValueError as err:
        raise TunerError(f"chat_template: {name}: {err}") from None


def render(
    template: str, facts: TokenizerFacts, messages: list[dict[str, str]], generation: bool
) -> str:
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            [messages],
            chat_template=template,
            add_generation_prompt=generation,
            bos_token=facts.bos or "",
            eos_token=facts.eos,
            date_string=TEMPLATE_DATE,
        )
    except TemplateError as err:
        raise TunerError(
            f"the chat template of {facts.model} ({facts.source}) cannot render a "
            f"user and an assistant turn: {err}"
        ) from None
    return rendered[0]


def end_of_turn(template: str, facts: TokenizerFacts) -> str:
    """What the template writes right after an assistant message, whitespace aside."""
    text = render(
        template,
        facts,
        [{"role": "user", "content": USER_MARK}, {"role": "assistant", "content": ANSWER_MARK}],
        generation=False,
    )
    return text.split(ANSWER_MARK, 1)[1].strip()


def chat_format(config: dict[str, Any], facts: TokenizerFacts) -> ChatFormat:
    name, template = template_for(config, facts)
    eos = (config.get("special_tokens") or {}).get("eos_token") or facts.eos
    trained = replace(facts, eos=eos)
    return ChatFormat(name, template, end_of_turn(template, trained), eos, trained)


def user_format(chat: ChatFormat, prompt: str) -> str:
    """An Axolotl `format` string: the template rendered up to the answer for one user
    turn of `prompt` (which holds {instruction} and {input}). Literal braces are
    doubled for str.format. A bos the tokenizer adds by itself is left out, so it is
    not there twice."""
    text = render(
        chat.template, chat.facts, [{"role": "user", "content": USER_MARK}], generation=True
    )
    if chat.facts.bos and text.startswith(chat.facts.bos):
        text = text[len(chat.facts.bos) :]
    before, after = text.split(USER_MARK, 1)
    return literal(before) + prompt + literal(after)


def literal(text: str) -> str:
    """Text that str.format leaves as it is."""
    return text.replace("{", "{{").replace("}", "}}")


def facts_for(config: dict[str, Any], meta: dict[str, Any], hardware: str) -> TokenizerFacts | None:
    """The tokenizer a composed config trains with (`tokenizer_config`, else
    `base_model`). The embedded default is converted first if need be. A recipe that
    starts from another task's merged model, not merged yet, gets that task's tokenizer
    as its training leaves it."""
    model = str(config.get("tokenizer_config") or config.get("base_model") or "")
    folder = Path(model) if Path(model).is_absolute() else ROOT / model
    if meta.get("model") == "embedded" and not (folder / "tokenizer_config.json").is_file():
        from tuner.models import embedded_model_dir, ensure_embedded_model

        if folder.resolve() == embedded_model_dir().resolve():
            ensure_embedded_model()
    starts_from = meta.get("starts_from")
    if starts_from and not (folder / "tokenizer_config.json").is_file():
        from tuner.recipes import compose

        source = compose(starts_from, hardware)
        facts = facts_for(source.config, source.meta, hardware)
        if facts is None:
            return None
        trained = chat_format(source.config, facts)
        return replace(
            facts,
            eos=trained.eos,
            chat_template=trained.template,
            source=f"the {starts_from} run's tokenizer ({facts.source})",
        )
    return tokenizer_facts(model)


def saved_template(folder: Path) -> str | None:
    """The chat template a tokenizer folder holds: chat_template.jinja, which
    transformers writes, or the older tokenizer_config.json key."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


@dataclass(frozen=True)
class SavedChat:
    """What a trained run's saved tokenizer serves with. The manifest keeps it;
    evaluation compares the folder's template against it."""

    chat_template_sha256: str | None
    end_of_turn: str | None
    eos: str


def saved_chat(folder: Path) -> SavedChat:
    facts = folder_facts(folder)
    template = saved_template(folder)
    return SavedChat(
        chat_template_sha256=sha256_text(template) if template else None,
        end_of_turn=end_of_turn(template, facts) if template else None,
        eos=facts.eos,
    )


def stop_on_end_of_turn(folder: Path) -> list[int]:
    """Make a model folder's generation config stop on its tokenizer's eos. A model
    merged from a base keeps the base's config, whose eos ends a document: generation
    with transformers would run past the end of every turn. Returns the stop ids."""
    from transformers import AutoTokenizer, GenerationConfig

    eos_id = AutoTokenizer.from_pretrained(folder, local_files_only=True).eos_token_id
    config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    current = config.eos_token_id
    current = current if isinstance(current, list) else [] if current is None else [current]
    config.eos_token_id = [eos_id, *(i for i in current if i != eos_id)]
    config.save_pretrained(folder)
    return config.eos_token_id
