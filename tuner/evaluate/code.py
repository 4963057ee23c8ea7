"""From a model's answer to a HumanEval-style problem to the program the sandbox runs."""

from __future__ import annotations

import re
from typing import Any

from tuner.evaluate.sandbox import SandboxResult, run_python

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def program_for(problem: dict[str, Any], answer: str) -> str:
    """The answer's first code block (or the whole answer) with the problem's tests.
    The prompt comes first for its imports and helpers: a block that defines the
    function again replaces the stub, one that does not is taken as the stub's body."""
    match = CODE_BLOCK.search(answer)
    code = match.group(1) if match else answer
    entry = problem["entry_point"]
    joint = "\n" if f"def {entry}" in code else ""
    return f"{problem['prompt']}{joint}{code}\n\n{problem['test']}\n\ncheck({entry})\n"


def check_answer(problem: dict[str, Any], answer: str) -> SandboxResult:
    return run_python(program_for(problem, answer))
