"""`just serve TASK HW`: a finished run behind vLLM's OpenAI-compatible server.

One server answers for both models, so a client compares them by changing one name:
the run's LoRA adapter under the task's name (`--enable-lora --lora-modules
TASK=runs/TASK-HW`) and its base model under the base's hub id. Both render turns with
the chat template the run trained with and saved beside the adapter (`--tokenizer`).
A run that trained every weight (a model from scratch) is served alone, under the
task's name.

The server binds to loopback unless told otherwise. Its API key comes from the
environment only (VLLM_API_KEY, which vLLM reads itself), never from the command line,
where other users of the machine could read it: a server reachable from other machines
without one is refused. The hardware overlay's `tuner.serve` mapping gives vLLM's flags
for that machine (tensor parallelism, memory utilisation); its `tuner.env`, the
environment the GPUs need.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.chat import saved_template
from tuner.containers import run_in_image, should_dispatch
from tuner.errors import TunerError
from tuner.hardware import gpu_profile
from tuner.hub import hub_id
from tuner.manifest import finished_manifest, weights_kind
from tuner.options import Option, Options, parse_options
from tuner.project import local_path, run_dir
from tuner.recipes import META_KEY, load_hardware

API_KEY_VARIABLE = "VLLM_API_KEY"
# vLLM accepts these LoRA ranks only (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# How long a server may take to answer its first request: loading a 70B's weights
# from a network disk takes minutes.
START_TIMEOUT_S = 1800


def port_number(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError("a TCP port lies in 1..65535")
    return value


OPTIONS: Options = {
    "port": Option(port_number, 8000, "the TCP port the server listens on"),
    "host": Option(
        str,
        "127.0.0.1",
        f"the address it binds to; any but loopback needs {API_KEY_VARIABLE} in the environment",
    ),
}


@dataclass(frozen=True)
class ServedModels:
    """What one server answers for, and the command that starts it."""

    names: list[str]  # the adapter's (or the whole model's) name first
    command: list[str]
    env: dict[str, str]
    url: str  # the server's base URL, as a client on this machine reaches it


def serve(task: str, hardware: str, option_pairs: list[str], console: Console) -> None:
    options = parse_options(option_pairs, OPTIONS, "serve")
    refuse_open_host(options["host"])
    meta = load_hardware(hardware).get(META_KEY) or {}
    if gpu_profile(meta, hardware) is not None and should_dispatch():
        run_in_image(hardware, ["serve", task, hardware, *option_pairs], host_network=True)
        return
    served = served_models(task, hardware, options, meta)
    log = run_dir(task, hardware) / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            served.command,
            env=served.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches this process, which stops the server
            # and waits for it, rather than both at once.
            start_new_session=True,
        )
        try:
            wait_until_ready(server, served, log, console)
            print(usage(served), flush=True)  # stdout: what a user copies
            console.print(f"Requests are logged in {log}. Ctrl-C stops the server.")
            server.wait()
        except KeyboardInterrupt:
            stop(server, console)
            return
        finally:
            if server.poll() is None:
                stop(server, console)
    raise TunerError(
        f"serve: vLLM exited with code {server.returncode}. Its log, {log}, ends:\n" + log_tail(log)
    )


def refuse_open_host(host: str) -> None:
    if is_loopback(host) or os.environ.get(API_KEY_VARIABLE):
        return
    raise TunerError(
        f"serve: host={host} lets anyone who reaches this machine use the models, and no "
        f"API key is set. Put one in the environment (export {API_KEY_VARIABLE}=…; vLLM "
        "then requires it as a bearer token), or keep the default host=127.0.0.1."
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def served_models(
    task: str, hardware: str, options: dict[str, Any], meta: dict[str, Any]
) -> ServedModels:
    run = run_dir(task, hardware)
    manifest = finished_manifest(run, task, hardware, "serve")
    kind = weights_kind(run, "serve")
    if kind == "prompt-tuning":
        raise TunerError(
            f"serve: {run} holds a prompt-tuning adapter, which vLLM cannot load (it serves "
            "LoRA adapters only). Evaluate it with `just eval "
            f"{task} {hardware}` (transformers with PEFT), or train a LoRA to serve."
        )
    if saved_template(run) is None:
        raise TunerError(
            f"serve: {run} holds no chat template (chat_template.jinja or tokenizer_config."
            f"json), so requests could not be rendered as it trained. Train it again: "
            f"`just train {task} {hardware} --fresh`."
        )
    vllm = Path(sys.executable).with_name("vllm")
    command = [str(vllm), "serve"]
    if kind == "full":
        names = [task]
        command += [str(run), "--served-model-name", task]
    else:
        base = str(manifest["base_model"])
        base_name = hub_id(base) or Path(local_path(base)).name
        names = [task, base_name]
        command += [local_path(base), "--served-model-name", base_name, "--tokenizer", str(run)]
        command += ["--enable-lora", "--lora-modules", f"{task}={run}"]
        command += ["--max-lora-rank", str(lora_rank_allowed(run))]
    command += ["--host", options["host"], "--port", str(options["port"])]
    command += ["--seed", str(manifest.get("seed") or 0)]
    command += vllm_flags(meta.get("serve") or {})
    if gpu_profile(meta, hardware) is None:
        from tuner.generate.backends import configure_vllm_for_cpu, cpu_dtype

        configure_vllm_for_cpu()
        command += ["--dtype", cpu_dtype()]  # as every CPU engine here runs
    env = {**os.environ, **{k: str(v) for k, v in (meta.get("env") or {}).items()}}
    client_host = "127.0.0.1" if options["host"] in ("0.0.0.0", "::") else options["host"]
    url = f"http://{client_host}:{options['port']}/v1"
    return ServedModels(names=names, command=command, env=env, url=url)


def lora_rank_allowed(run: Path) -> int:
    """The smallest rank vLLM accepts that holds the adapter's."""
    rank = int(json.loads((run / "adapter_config.json").read_text()).get("r", 16))
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise TunerError(
        f"serve: the adapter in {run} has rank {rank}; vLLM serves ranks up to "
        f"{VLLM_LORA_RANKS[-1]}. Merge it instead (`just publish … merged=true`)."
    )


def vllm_flags(settings: dict[str, Any]) -> list[str]:
    """`tuner.serve` of an overlay as vLLM's command-line flags: `key: value` gives
    `--key value`; `key: true`, `--key`; `key: false`, `--no-key`."""
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def wait_until_ready(
    server: subprocess.Popen, served: ServedModels, log: Path, console: Console
) -> None:
    """Until the server lists its models; an error, with the log's end, if it exits."""
    started = time.monotonic()
    with console.status("") as status:
        while time.monotonic() - started < START_TIMEOUT_S:
            if server.poll() is not None:
                raise TunerError(
                    f"serve: vLLM exited with code {server.returncode} while starting. "
                    f"Its log, {log}, ends:\n" + log_tail(log)
                )
            if lists_models(served.url):
                return
            elapsed = time.monotonic() - started
            status.update(f"Starting vLLM ({elapsed:.0f} s; log: {log})…")
            time.sleep(1)
    raise TunerError(f"serve: vLLM did not answer in {START_TIMEOUT_S} s; see {log}.")


def lists_models(url: str) -> bool:
    request = urllib.request.Request(url + "/models")
    if key := os.environ.get(API_KEY_VARIABLE):
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def usage(served: ServedModels) -> str:
    """The models served, a curl line and an openai snippet; the key by its name only."""
    key = os.environ.get(API_KEY_VARIABLE)
    header = f' -H "Authorization: Bearer ${API_KEY_VARIABLE}"' if key else ""
    body = json.dumps(
        {"model": served.names[0], "messages": [{"role": "user", "content": "Hello!"}]}
    )
    api_key = f'os.environ["{API_KEY_VARIABLE}"]' if key else '"none"'
    return "\n".join(
        [
            f"Serving at {served.url}: " + ", ".join(served.names),
            "",
            f"curl {served.url}/chat/completions -H 'Content-Type: application/json'{header} "
            f"-d '{body}'",
            "",
            "import os",
            "from openai import OpenAI",
            f'client = OpenAI(base_url="{served.url}", api_key={api_key})',
            "reply = client.chat.completions.create(",
            f'    model="{served.names[0]}", messages=[{{"role": "user", "content": "Hello!"}}]',
            ")",
            "print(reply.choices[0].message.content)",
            "",
        ]
    )


def stop(server: subprocess.Popen, console: Console) -> None:
    """SIGINT, as Ctrl-C would send it, then SIGKILL if it has not stopped in 30 s."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    console.print("Server stopped.")


def log_tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
