"""`key=value` options of the data stages (`just generate math n=500 model=…`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner.errors import TunerError


def parse_options(
    pairs: list[str], known: dict[str, tuple[Callable[[str], Any], Any]], command: str
) -> dict[str, Any]:
    """Options by name with their defaults filled in. `known` maps each name to a
    converter and a default; an unknown name or a value that does not convert is an
    error that lists what is accepted."""
    values = {name: default for name, (_, default) in known.items()}
    accepted = ", ".join(f"{name}=" for name in known)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise TunerError(f"{command}: '{pair}' is not key=value. Options: {accepted}.")
        if name not in known:
            raise TunerError(f"{command}: unknown option '{name}'. Options: {accepted}.")
        convert = known[name][0]
        try:
            values[name] = convert(raw)
        except ValueError as problem:
            raise TunerError(f"{command}: {name}={raw} is not valid ({problem}).") from None
    return values


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    """A converter accepting only the given words."""

    def convert(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"choose one of: {', '.join(allowed)}")
        return raw

    return convert
