"""Running generated code: a separate process that cannot reach the network, write
outside its own throwaway directory, see the environment's secrets, fork without end,
allocate without end or run past its time.

How, on Linux without Docker:
- `unshare` (util-linux) gives the program its own network namespace (no interface but
  a loopback that is down), its own PID namespace (when the time is up, killing its
  first process kills every process it forked) and its own mount namespace, in which
  every mount is remounted read-only except the program's directory, and the home
  directory (where a Hugging Face token file lives) is hidden under an empty tmpfs.
  An unprivileged user gets these through a user namespace; root drops to `nobody`
  inside them instead (root ignores the process limit).
- resource limits: address space, CPU seconds, file size, number of processes. Root
  ignores the process limit, so as root the program also goes into a cgroup of the
  `pids` controller capped at the same number, where one can be created.
- an environment with nothing but PATH, HOME and LANG; Python started isolated (`-I`).

Where namespaces are not allowed (an unprivileged container), the sandbox refuses to
run code unless TUNER_SANDBOX=rlimits is set, which keeps the limits (the process cap
as RLIMIT_NPROC over the user's running tasks, or the cgroup as root), the empty
environment and the directory but not the network and file-system isolation.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import TunerError

# Runs inside the new namespaces: keep the work directory writable, make every other
# mount read-only, hide the home directory, then start the program under the limits.
PRELUDE = r"""
set -e
work="$1"; hide="$2"; nproc="$3"; shift 3
mount --bind "$work" "$work"
for dir in $hide; do
  if [ -d "$dir" ]; then mount -t tmpfs -o size=1m,mode=0755 tmpfs "$dir"; fi
done
awk '$4 ~ /(^|,)rw(,|$)/ {print $2}' /proc/self/mounts | while read -r target; do
  [ "$target" = "$work" ] && continue
  mount -o remount,bind,ro "$target" 2>/dev/null || true
done
cd "$work"
exec prlimit --nproc="$nproc" -- "$@"
"""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 32


@dataclass(frozen=True)
class SandboxResult:
    status: str  # passed | failed | timeout
    returncode: int | None
    output: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def isolation() -> str:
    """'namespaces' where this process may create them, else 'rlimits' when the user
    opted into the weaker mode; anything else is an error that says what to do."""
    if os.environ.get("TUNER_SANDBOX") == "rlimits":
        return "rlimits"
    if shutil.which("unshare") and shutil.which("prlimit"):
        probe = subprocess.run(
            [*namespace_command(), "/bin/true"],
            capture_output=True,
            timeout=30,
        )
        if probe.returncode == 0:
            return "namespaces"
    raise TunerError(
        "The code sandbox needs Linux namespaces (util-linux `unshare`), which this "
        "machine refuses (an unprivileged container?). Run where user namespaces are "
        "allowed, or set TUNER_SANDBOX=rlimits to run generated code with resource "
        "limits and an empty environment but without network and file-system isolation."
    )


def namespace_command() -> list[str]:
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--propagation",
        "private",
    ]


def hidden_directories() -> list[str]:
    """Where credentials live: the Hugging Face token's folders, cloud and SSH keys.
    (Not the whole home directory: the Python interpreter may be installed there.)"""
    home = Path.home()
    places = {home / ".cache" / "huggingface", home / ".huggingface", home / ".ssh"}
    places |= {home / ".aws", home / ".config", home / ".docker", home / ".netrc.d"}
    for name in ("HF_HOME", "HF_TOKEN_PATH"):
        if value := os.environ.get(name):
            places.add(Path(value) if Path(value).is_dir() else Path(value).parent)
    return sorted(str(p) for p in places if p.is_dir() and " " not in str(p))


def pids_cgroup(processes: int) -> Path | None:
    """A fresh cgroup capping the number of processes (cgroup v2, or v1's `pids`
    hierarchy); None where this process may not create one."""
    if os.geteuid() != 0:
        return None
    for parent in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (parent / "cgroup.procs").exists() and os.access(parent, os.W_OK):
            group = Path(tempfile.mkdtemp(prefix="tuner-sandbox-", dir=parent))
            try:
                (group / "pids.max").write_text(str(processes))
            except OSError:
                group.rmdir()
                continue
            return group
    return None


def remove_cgroup(group: Path, seconds: float = 10.0) -> None:
    """Kill whatever is still in the cgroup (a fork bomb's last children may outlive
    its namespace's first process by a moment), then remove it."""
    deadline = time.monotonic() + seconds
    while True:
        pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        if not pids:
            group.rmdir()
            return
        if time.monotonic() > deadline:
            raise TunerError(f"Sandboxed processes {pids[:10]} in {group} would not die.")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def user_tasks(uid: int) -> int:
    """The processes and threads of `uid` now: what RLIMIT_NPROC counts against."""
    tasks = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            if int(fields["Uid"].split()[0]) == uid:
                tasks += int(fields["Threads"])
    return tasks


def set_limits(limits: SandboxLimits, cgroup: Path | None, nproc: int | None) -> None:
    """Runs in the child between fork and exec. `nproc`: RLIMIT_NPROC, where neither a
    namespace (prlimit inside it) nor a cgroup caps the processes."""
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    seconds = int(limits.wall_seconds) + 1
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` with Python in the sandbox; passed means exit status 0."""
    limits = limits or SandboxLimits()
    mode = isolation()
    with tempfile.TemporaryDirectory(prefix="tuner-sandbox-") as work:
        program = Path(work) / "program.py"
        program.write_text(source)
        python = [sys.executable, "-I", str(program)]
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        if mode == "namespaces":
            hide = " ".join(hidden_directories())
            command = [*namespace_command(), "sh", "-c", PRELUDE, "sandbox", work, hide]
            command += [str(limits.processes), *python]
        else:
            command = python
        return execute(command, env, work, limits, in_namespaces=mode == "namespaces")


def execute(
    command: list[str],
    env: dict[str, str],
    work: str,
    limits: SandboxLimits,
    in_namespaces: bool,
) -> SandboxResult:
    cgroup = pids_cgroup(limits.processes)
    # RLIMIT_NPROC counts every process of the user: the cap is what runs now plus the
    # program's allowance.
    nproc = None
    if cgroup is None and not in_namespaces:
        nproc = user_tasks(os.getuid()) + limits.processes
    try:
        return supervise(command, env, work, limits, cgroup, nproc)
    finally:
        if cgroup is not None:
            remove_cgroup(cgroup)


def supervise(
    command: list[str],
    env: dict[str, str],
    work: str,
    limits: SandboxLimits,
    cgroup: Path | None,
    nproc: int | None,
) -> SandboxResult:
    process = subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=functools.partial(set_limits, limits, cgroup, nproc),
    )
    try:
        output, _ = process.communicate(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        kill_group(process)
        output, _ = process.communicate()
        return SandboxResult("timeout", None, tail(output))
    kill_group(process)
    status = "passed" if process.returncode == 0 else "failed"
    return SandboxResult(status, process.returncode, tail(output))


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Whatever the program left behind in its session goes with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(output: bytes, size: int = 2000) -> str:
    return output[-size:].decode("utf-8", errors="replace")
