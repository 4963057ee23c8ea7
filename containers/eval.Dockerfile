# Evaluation image: a GPU target's image plus bigcode-evaluation-harness in an environment
# of its own (its pins, fsspec < 2023.10 among them, conflict with datatrove's), from the
# package index as NVIDIA packages it (nvidia-bigcode-eval), exactly its lock.
# `just build a100 --eval` builds it on top of the a100 image; `just eval` runs a
# suite's bigcode benchmarks with the Python BIGCODE_PYTHON names.
ARG TARGET_IMAGE
FROM ${TARGET_IMAGE}

ARG TARGET
ENV BIGCODE_PYTHON=/opt/venvs/bigcode/bin/python

USER 1000:1000
RUN python3 -m venv /opt/venvs/bigcode \
    && /opt/venvs/bigcode/bin/python -m pip install --no-deps -r "containers/locks/${TARGET}.bigcode.txt"

ENTRYPOINT ["just"]
CMD ["--list"]
