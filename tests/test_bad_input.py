"""A corpus of bad data files and bad options, against every stage that reads them:
`just train … data=`, `just filter`, `just prefs`, and the options of generate, plan,
smoke and eval. Each must be refused with a TunerError that names the file (and line)
or the key, never with another exception, and a refused stage leaves nothing behind."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from tuner.errors import TunerError
from tuner.filter.run import filter_records
from tuner.recipes import compose

QUIET = Console(quiet=True)
GOOD = json.dumps(
    {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris is the capital of France."},
        ]
    }
)


def lines(*rows: str) -> bytes:
    return "".join(row + "\n" for row in rows).encode()


# name → the file's bytes (None: a symlink to nothing; "dir": a directory).
BAD_FILES: dict[str, bytes | str | None] = {
    "empty": b"",
    "blank lines only": b"\n   \n\t\n",
    "latin-1": GOOD.replace("France", "Fran\u00e7e").encode("latin-1") + b"\n",
    "cp1252 quotes": GOOD.replace("Paris", "\u201cParis\u201d").encode("cp1252") + b"\n",
    "utf-16 with BOM": (GOOD + "\n").encode("utf-16"),
    "utf-32": (GOOD + "\n").encode("utf-32"),
    "invalid utf-8 on line 3": lines(GOOD, GOOD) + b'{"messages": "\xc3\x28"}\n',
    "NUL bytes": lines(GOOD) + b"\x00\x00\x00\n",
    "random binary": bytes(random.Random(0).randrange(256) for _ in range(4096)),
    "gzip file": gzip.compress(lines(GOOD, GOOD)),
    "truncated last line": lines(GOOD) + GOOD[: len(GOOD) // 2].encode(),
    "truncated mid-string": lines(GOOD, '{"messages": [{"role": "user", "content": "Wha'),
    "a JSON array, not an object": lines(f"[{GOOD}]"),
    "a bare string": lines('"just a string"'),
    "a number": lines("42"),
    "null": lines("null"),
    "messages is a string": lines('{"messages": "hello"}'),
    "messages is empty": lines('{"messages": []}'),
    "one message only": lines('{"messages": [{"role": "user", "content": "hi"}]}'),
    "unknown role": lines(GOOD.replace('"assistant"', '"robot"')),
    "content is a number": lines(GOOD.replace('"Paris is the capital of France."', "7")),
    "content missing": lines('{"messages": [{"role": "user"}, {"role": "assistant"}]}'),
    "role missing": lines('{"messages": [{"content": "a"}, {"content": "b"}]}'),
    "no messages key": lines('{"conversations": []}'),
    "CSV instead of JSONL": b"question,answer\nWhat?,That.\n",
    "YAML instead of JSONL": b"messages:\n  - role: user\n    content: hi\n",
    "trailing comma": lines(GOOD[:-1] + ",}"),
    "single quotes": lines(GOOD.replace('"', "'")),
    "deeply nested": lines('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "a huge line that is not JSON": b"x" * 5_000_000 + b"\n",
    "a symlink to nothing": None,
    "a directory": "dir",
}


def make(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "input.jsonl"
    content = BAD_FILES[name]
    if content is None:
        path.symlink_to(tmp_path / "gone.jsonl")
    elif content == "dir":
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


def train_data(path: Path) -> None:
    compose("instruction", "cpu", [f"data={path}"])


def filter_stage(path: Path) -> None:
    filter_records(str(path), ["against=none"], QUIET)


def prefs_stage(path: Path) -> None:
    from tuner.preferences import build_preferences

    build_preferences(str(path), [], QUIET)


STAGES: dict[str, Callable[[Path], None]] = {
    "train data=": train_data,
    "filter": filter_stage,
    "prefs": prefs_stage,
}


# A prompt not answered yet is what `just prefs` may be given.
VALID_FOR = {"prefs": {"one message only"}}


def test_the_corpus_is_large_enough():
    assert len(BAD_FILES) >= 30


@pytest.mark.parametrize(
    ("stage", "name"),
    [(s, n) for s in STAGES for n in BAD_FILES if n not in VALID_FOR.get(s, ())],
)
def test_every_stage_refuses_every_bad_file_by_name(stage, name, tmp_path):
    path = make(tmp_path, name)
    with pytest.raises(TunerError) as refused:
        STAGES[stage](path)
    assert str(path) in str(refused.value)
    # Nothing left behind beside the input: no output folder, no partial files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.jsonl"]


BAD_OPTIONS = [
    ("generate", ["n=0"], "n=0"),
    ("generate", ["n=many"], "n=many"),
    ("generate", ["backend=tpu"], "backend=tpu"),
    ("generate", ["workers=2", "worker=5"], "worker=5"),
    ("generate", ["nonsense"], "'nonsense' is not key=value"),
    ("generate", ["colour=red"], "unknown option 'colour'"),
    ("plan", ["mfu=fast"], "mfu=fast"),
    ("plan", ["rows=-3"], "rows=-3"),
    ("plan", ["mfu=5"], "mfu=5"),
    ("plan", ["price=-1"], "price=-1"),
    ("smoke", ["steps=0"], "steps=0"),
    ("smoke", ["random_weights=maybe"], "random_weights=maybe"),
    ("eval", ["limit=0"], "limit=0"),
    ("eval", ["only=both"], "only=both"),
    ("train", ["lora_r=[1"], "lora_r"),
    ("train", ["data_size=5"], "data_size"),
]


@pytest.mark.parametrize(("command", "arguments", "named"), BAD_OPTIONS)
def test_bad_options_name_the_key(command, arguments, named, runs):
    from tuner.evaluate.run import evaluate
    from tuner.generate.run import generate
    from tuner.plan import make_plan
    from tuner.smoke import smoke

    run = {
        "generate": lambda: generate("math", arguments, QUIET),
        "plan": lambda: make_plan("math", "a100", arguments),
        "smoke": lambda: smoke("instruction", "cpu", arguments, QUIET),
        "eval": lambda: evaluate("instruction", "cpu", arguments, QUIET),
        "train": lambda: compose("math", "a100", arguments),
    }[command]
    with pytest.raises(TunerError, match=named.replace("[", r"\[")):
        run()
