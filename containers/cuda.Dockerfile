# The GPU targets' image: t4, a100 and 4090x8 on amd64, dgx-spark on arm64. Each builds
# it with its own arguments from containers/targets.yaml (`just build a100`): the CUDA
# base image, the target (whose locks it installs) and the card's compute capability.
# Nothing secret goes in: tokens come from the environment at run time.
ARG BASE
FROM ${BASE}

ARG TARGET
# The card's compute capability ("7.5" T4, "8.0" A100, "8.9" RTX 4090, "12.1" GB10):
# what DeepSpeed's ops compile for when they are first used.
ARG TORCH_CUDA_ARCH_LIST
# The oldest host driver the base image's CUDA runs on; `just doctor` and `just train`
# compare the host's with it.
ARG MIN_DRIVER
LABEL org.opencontainers.image.title="llm-tuner:${TARGET}" \
      tuner.min-driver="${MIN_DRIVER}"

# DS_BUILD_OPS=0: DeepSpeed installs as pure Python (its package has no wheel, and no op
# is compiled at build time); each op compiles on first use with this image's nvcc,
# whose CUDA major is the locked torch's.
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    DS_BUILD_OPS=0 \
    DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TUNER_VENVS=/opt/venvs \
    HF_HOME=/home/tuner/.cache/huggingface

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# util-linux: `unshare` for the code sandbox; build-essential and python3-dev: Triton's
# launcher and DeepSpeed's ops compile at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       build-essential ca-certificates git python3 python3-dev python3-venv util-linux \
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

# The two environments, each exactly its lock (wheels only, but for the pure-Python
# sources the lock names), then the project itself without dependencies.
RUN for env in train infer; do \
      python3 -m venv "/opt/venvs/${env}" \
      && "/opt/venvs/${env}/bin/python" -m pip install --no-deps -r "containers/locks/${TARGET}.${env}.txt" \
      && "/opt/venvs/${env}/bin/python" -m pip install --no-deps -e . ; \
    done

ENV TUNER_IMAGE=1 \
    PATH=/opt/venvs/train/bin:${PATH}
ENTRYPOINT ["just"]
CMD ["--list"]
