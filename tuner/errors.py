"""The one exception type the command line turns into a one-paragraph message."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class TunerError(Exception):
    """Bad input or an unmet precondition: the message says what is wrong and what to do."""


def validation_problems(err: ValidationError, whole: str = "") -> str:
    """pydantic's errors on one line, each as `key.path: message`; `whole` names the
    value itself where the error has no key."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in err.errors()
    )
