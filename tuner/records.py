"""The project's record schemas (JSON Lines, the same in every stage) and a reader that
names the file and line of anything malformed.

- a conversation: `{"messages": [{"role", "content"}, …], "meta": {…}}`
- a preference pair: `{"messages": [prompt turns], "chosen": {…}, "rejected": {…}, "meta": {…}}`

Axolotl reads the first with `type: chat_template` and the second with
`type: chat_template.default`; `dataset_entry` writes those entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuner.errors import TunerError, validation_problems


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Conversation(BaseModel):
    shape: ClassVar[str] = '{"messages": [{"role": …, "content": …}, …]}'

    messages: list[Message] = Field(min_length=2)
    meta: dict[str, Any] = Field(default_factory=dict)


class Prompts(BaseModel):
    """What the preference stage reads: conversations, or prompts not answered yet (the
    turns up to the last user message are used either way)."""

    shape: ClassVar[str] = '{"messages": [{"role": "user", "content": …}, …]}'

    messages: list[Message] = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)


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
    records = [parse_record(path, number, line, schema)[1] for number, line in text_lines(path)]
    if not records:
        raise TunerError(f"{path}: the file holds no records.")
    return records


def dataset_entry(path: str, preference: bool) -> dict[str, Any]:
    """The Axolotl dataset entry that reads a file of this project's records."""
    entry: dict[str, Any] = {"path": path, "ds_type": "json", "split": "train"}
    if preference:
        return entry | {
            "type": "chat_template.default",
            "field_messages": "messages",
            "field_chosen": "chosen",
            "field_rejected": "rejected",
        }
    return entry | {
        "type": "chat_template",
        "field_messages": "messages",
        "roles_to_train": ["assistant"],
    }


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
