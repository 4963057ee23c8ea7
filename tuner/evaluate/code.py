"""From a model's answer to a coding problem to the program the sandbox runs: HumanEval
problems (a function stub, a `check` function) and MBPP problems (a description, assert
statements, imports the tests need)."""

from __future__ import annotations

import re
from typing import Any

from tuner.evaluate.sandbox import SandboxResult, run_python

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def answer_code(answer: str) -> str:
    """The answer's first code block, or the whole answer when it has none."""
    match = CODE_BLOCK.search(answer)
    return match.group(1) if match else answer


def program_for(problem: dict[str, Any], answer: str) -> str:
    """The answer's code followed by the problem's tests, for either format.

    HumanEval: the prompt comes first for its imports and helpers; a block that defines
    the function again replaces the stub, one that does not is taken as the stub's body.
    MBPP: the test imports, the code, then the asserts."""
    code = answer_code(answer)
    if "entry_point" in problem:
        entry = problem["entry_point"]
        joint = "\n" if f"def {entry}" in code else ""
        return f"{problem['prompt']}{joint}{code}\n\n{problem['test']}\n\ncheck({entry})\n"
    imports = "\n".join(problem.get("test_imports") or [])
    tests = "\n".join(problem["test_list"])
    return f"{imports}\n{code}\n\n{tests}\n"


def check_answer(problem: dict[str, Any], answer: str) -> SandboxResult:
    return run_python(program_for(problem, answer))
