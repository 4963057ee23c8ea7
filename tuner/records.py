"""The project's record schemas (JSON Lines, the same in every stage) and a reader that
names the file and line of anything malformed.

- a conversation: `{"messages": [{"role", "content"}, …], "meta": {…}}`, or ShareGPT's
  `{"conversations": [{"from", "value"}, …]}` as OpenHermes-2.5 and many hub sets write
  it (human, gpt and system turns), read as the same messages
- a preference pair: `{"messages": [prompt turns], "chosen": {…}, "rejected": {…}, "meta": {…}}`

Axolotl reads the first with `type: chat_template` (ShareGPT's fields and role names
mapped) and the second with `type: chat_template.default`; `dataset_entry` writes those
entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuner.errors import TunerError, validation_problems


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


# ShareGPT's speakers → the project's roles (Axolotl's `roles:` the other way round).
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}


def is_sharegpt(value: Any) -> bool:
    """A ShareGPT record: turns under `conversations`, none under `messages`."""
    return isinstance(value, dict) and "messages" not in value and "conversations" in value


def from_sharegpt(value: Any) -> Any:
    """A ShareGPT record's turns as messages; anything else as it is. A speaker not in
    SHAREGPT_ROLES stays as it is, for the role's validation to name it."""
    if not is_sharegpt(value) or not isinstance(value["conversations"], list):
        return value
    messages = [
        {
            "role": SHAREGPT_ROLES.get(turn.get("from"), turn.get("from")),
            "content": turn.get("value"),
        }
        if isinstance(turn, dict)
        else turn
        for turn in value["conversations"]
    ]
    rest = {key: item for key, item in value.items() if key != "conversations"}
    return {**rest, "messages": messages}


class Conversation(BaseModel):
    shape: ClassVar[str] = (
        '{"messages": [{"role": …, "content": …}, …]} or ShareGPT\'s '
        '{"conversations": [{"from": …, "value": …}, …]}'
    )

    messages: list[Message] = Field(min_length=2)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def sharegpt(cls, value: Any) -> Any:
        return from_sharegpt(value)


class Prompts(BaseModel):
    """What the preference stage reads: conversations, or prompts not answered yet (the
    turns up to the last user message are used either way)."""

    shape: ClassVar[str] = '{"messages": [{"role": "user", "content": …}, …]}'

    messages: list[Message] = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def sharegpt(cls, value: Any) -> Any:
        return from_sharegpt(value)


class PreferencePair(BaseModel):
    shape: ClassVar[str] = '{"messages": [prompt turns], "chosen": {…}, "rejected": {…}}'

    messages: list[Message] = Field(min_length=1)
    chosen: Message
    rejected: Message
    meta: dict[str, Any] = Field(default_factory=dict)


Record = TypeVar("Record", bound=BaseModel)


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file (a leading byte-order
    mark is dropped), or a TunerError naming the file, the line and the byte that is
    not UTF-8."""
    if not path.is_file():
        raise TunerError(f"{path}: no such file.")
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise TunerError(
                    f"{path}:{number}: not UTF-8 (byte 0x{raw[err.start]:02x} at byte offset "
                    f"{offset + err.start} of the file). Save the file as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path} > fixed.jsonl`."
                ) from None
            offset += len(raw)
            if line.strip():
                yield number, line


def parse_record(path: Path, number: int, line: str, schema: type[Record]) -> tuple[Any, Record]:
    """One line's JSON value and its record, or a TunerError naming the file, the line
    and what is wrong with it."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise TunerError(
            f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}). "
            "Each line must hold one JSON object; fix or remove that line."
        ) from None
    except RecursionError:
        raise TunerError(
            f"{path}:{number}: nested too deeply to be a record; fix or remove that line."
        ) from None
    try:
        return value, schema.model_validate(value)
    except ValidationError as err:
        problems = validation_problems(err, "record")
        raise TunerError(
            f"{path}:{number}: not a {schema.__name__} record ({problems}). Each line "
            f"needs {schema.shape}."
        ) from None


def read_records(path: Path, schema: type[Record]) -> list[Record]:
    """Every record of a JSONL file, or a TunerError naming the file, the line and what is
    wrong with it. Blank lines are allowed; an empty file is not."""
    return read_records_and_format(path, schema)[0]


def read_records_and_format(path: Path, schema: type[Record]) -> tuple[list[Record], bool]:
    """The records, and whether the file writes them as ShareGPT: every line one way,
    since Axolotl reads a file with one set of field names."""
    records, sharegpt_lines, other_lines = [], [], []
    for number, line in text_lines(path):
        value, record = parse_record(path, number, line, schema)
        (sharegpt_lines if is_sharegpt(value) else other_lines).append(number)
        records.append(record)
    if not records:
        raise TunerError(f"{path}: the file holds no records.")
    if sharegpt_lines and other_lines:
        raise TunerError(
            f"{path}: line {sharegpt_lines[0]} is a ShareGPT record (conversations: from, "
            f"value) and line {other_lines[0]} is not: Axolotl reads a file one way. Write "
            "the file's records all as ShareGPT or all as messages."
        )
    return records, bool(sharegpt_lines)


def dataset_entry(
    path: str, preference: bool, sharegpt: bool = False, roles: Sequence[str] = ("assistant",)
) -> dict[str, Any]:
    """The Axolotl dataset entry that reads a file of this project's records: preference
    pairs, or conversations (written as ShareGPT: its field and speaker names) trained
    on the turns of `roles`."""
    entry: dict[str, Any] = {"path": path, "ds_type": "json", "split": "train"}
    if preference:
        return entry | {
            "type": "chat_template.default",
            "field_messages": "messages",
            "field_chosen": "chosen",
            "field_rejected": "rejected",
        }
    entry |= {"type": "chat_template", "field_messages": "messages"}
    if sharegpt:
        entry |= {
            "field_messages": "conversations",
            "message_property_mappings": {"role": "from", "content": "value"},
            "roles": {role: [speaker] for speaker, role in SHAREGPT_ROLES.items()},
        }
    return entry | {"roles_to_train": list(roles)}


def write_records(path: Path, records: list[BaseModel] | list[dict[str, Any]]) -> None:
    """Write JSONL atomically (temp file, then rename): a reader, or a resumed run, sees
    the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        for record in records:
            data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
            handle.write(orjson.dumps(data) + b"\n")
    partial.replace(path)
