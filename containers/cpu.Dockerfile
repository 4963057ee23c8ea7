# CPU image (amd64 or arm64): the embedded default model, `just demo` and the tests,
# with no GPU. `just build cpu`.
# Its base, debian:bookworm, is named in containers/targets.yaml.
ARG BASE
FROM ${BASE}

# For a build behind a proxy that cannot reach PyTorch's own index: a folder holding
# the CPU wheel of torch and a CA bundle, each passed with a read-only volume (see
# tests/test_image.py). Unset, pip uses its defaults.
ARG PIP_FIND_LINKS
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
COPY --chown=tuner:tuner . /workspace

RUN bash scripts/bootstrap.sh

ENV TUNER_IMAGE=1 \
    PATH=/opt/venvs/train/bin:${PATH}
ENTRYPOINT ["just"]
CMD ["--list"]
