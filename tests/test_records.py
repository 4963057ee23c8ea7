"""The project's JSONL records and `data=`: bad files are stopped with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.errors import TunerError
from tuner.recipes import compose
from tuner.records import Conversation, PreferencePair, read_records
from tuner.validation import validate

CONVERSATION = {
    "messages": [
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "7 is a prime number."},
    ],
    "meta": {"source": "test"},
}
PAIR = {
    "messages": [{"role": "user", "content": "Name a prime number."}],
    "chosen": {"role": "assistant", "content": "7 is prime."},
    "rejected": {"role": "assistant", "content": "8 is prime."},
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_records_are_read_with_their_meta(tmp_path):
    path = write_lines(
        tmp_path / "c.jsonl", [json.dumps(CONVERSATION), "", json.dumps(CONVERSATION)]
    )
    records = read_records(path, Conversation)
    assert len(records) == 2 and records[0].meta == {"source": "test"}


def test_broken_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(CONVERSATION), '{"messages": [', "{}"])
    with pytest.raises(TunerError, match=r"c.jsonl:2: not valid JSON"):
        read_records(path, Conversation)


def test_missing_field_names_line_and_field(tmp_path):
    broken = dict(PAIR)
    del broken["rejected"]
    path = write_lines(
        tmp_path / "p.jsonl", [json.dumps(PAIR), json.dumps(PAIR), json.dumps(broken)]
    )
    with pytest.raises(
        TunerError, match=r"p.jsonl:3: not a PreferencePair record \(rejected: Field required\)"
    ):
        read_records(path, PreferencePair)


def test_a_file_not_in_utf8_names_the_line_and_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first = json.dumps(CONVERSATION).encode() + b"\n"
    path.write_bytes(
        first + json.dumps(CONVERSATION).replace("user", "caf\u00e9").encode("latin-1")
    )
    with pytest.raises(TunerError, match=r"latin1.jsonl:2: not UTF-8 \(byte 0xe9 at byte offset"):
        read_records(path, Conversation)
    # A UTF-8 byte-order mark is not an error.
    marked = tmp_path / "bom.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + first)
    assert len(read_records(marked, Conversation)) == 1


def test_empty_file_is_refused(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(TunerError, match="holds no records"):
        read_records(path, Conversation)


def test_data_override_trains_on_own_records_with_the_matching_reader(tmp_path):
    sft = write_lines(tmp_path / "sft.jsonl", [json.dumps(CONVERSATION)])
    prefs = write_lines(tmp_path / "prefs.jsonl", [json.dumps(PAIR)])

    recipe = compose("math", "a100", [f"data=[{sft},{sft}]"])
    assert [d["type"] for d in recipe.config["datasets"]] == ["chat_template"] * 2
    assert recipe.config["datasets"][0]["path"] == str(sft)
    assert "data" not in recipe.config
    assert "overrides: data" in recipe.to_yaml()
    assert validate(recipe).ok

    recipe = compose("dpo", "cpu", [f"data={prefs}"])
    [entry] = recipe.config["datasets"]
    assert entry["type"] == "chat_template.default" and entry["field_chosen"] == "chosen"
    assert validate(recipe).ok


def test_data_override_with_the_wrong_kind_of_records_is_refused(tmp_path):
    sft = write_lines(tmp_path / "sft.jsonl", [json.dumps(CONVERSATION)])
    with pytest.raises(TunerError, match=r"sft.jsonl:1: not a PreferencePair record"):
        compose("dpo", "a100", [f"data={sft}"])
