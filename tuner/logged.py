"""Running another program (Axolotl, lm-eval) from the repository root, its output
echoed to the console and appended to a log as it happens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tuner.errors import TunerError
from tuner.project import ROOT

console = Console(stderr=True, soft_wrap=True)


def run_logged(
    command: list[str], env: dict[str, str], log: Path, on_failure: str = "", cwd: Path = ROOT
) -> None:
    """Run `command` in `cwd`; a non-zero exit is a TunerError naming the log, followed by
    `on_failure` (what was kept and how to go on)."""
    console.print(f"[bold]$ {' '.join(command)}[/bold]")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(line)
            sys.stderr.write(line)
        code = process.wait()
    if code != 0:
        raise TunerError(
            f"`{' '.join(command)}` failed with exit code {code}. Its output is in {log}; "
            f"the last lines above say why. {on_failure}".rstrip()
        )
