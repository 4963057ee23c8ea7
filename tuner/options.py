"""`key=value` options of the project's own commands (`just generate math n=500 model=…`):
each declared once, with its converter (which validates), default and one-line doc.
Parsing, the error that lists what is accepted, and the `--help` text come from that
declaration, so they cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuner.errors import TunerError


@dataclass(frozen=True)
class Option:
    convert: Callable[[str], Any]
    default: Any
    doc: str


Options = dict[str, Option]


def parse_options(pairs: list[str], known: Options, command: str) -> dict[str, Any]:
    """Options by name with their defaults filled in; an unknown name or a value that
    does not convert is an error that lists what is accepted."""
    values = {name: option.default for name, option in known.items()}
    accepted = ", ".join(f"{name}=" for name in known)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise TunerError(f"{command}: '{pair}' is not key=value. Options: {accepted}.")
        if name not in known:
            raise TunerError(f"{command}: unknown option '{name}'. Options: {accepted}.")
        try:
            values[name] = known[name].convert(raw)
        except ValueError as problem:
            raise TunerError(f"{command}: {name}={raw} is not valid ({problem}).") from None
    return values


def options_help(known: Options, heading: str = "options (key=value)") -> str:
    """The options as a `--help` section: one line each, with the default where there
    is one."""
    width = max(len(name) for name in known) + 1
    lines = [f"{heading}:"]
    for name, option in known.items():
        default = "" if option.default in (None, [], "") else f" (default: {option.default})"
        lines.append(f"  {name + '=':<{width + 1}} {option.doc}{default}")
    return "\n".join(lines)


def split_options(arguments: list[str], known: Options) -> tuple[list[str], list[str]]:
    """(this command's own key=value options, the rest: Axolotl overrides)."""
    own = [a for a in arguments if a.split("=", 1)[0] in known]
    return own, [a for a in arguments if a not in own]


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError("must lie in (0, 1]")
    return value


def non_negative(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    """A converter accepting only the given words."""

    def convert(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"choose one of: {', '.join(allowed)}")
        return raw

    return convert


def slurm_time(raw: str) -> str:
    """A Slurm job's time limit, as sbatch's --time takes it."""
    if not re.fullmatch(r"(\d+-)?\d{1,3}:\d{2}:\d{2}", raw):
        raise ValueError("give Slurm's time limit as HH:MM:SS or D-HH:MM:SS")
    return raw
