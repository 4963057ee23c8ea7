"""Fine-tuning recipes per task and per GPU: compose, validate, train, make data, evaluate."""

import os

# Validation and the chat format import Axolotl in this process; its telemetry, on by
# default, would try to send usage data from every `just config`. A value the user set
# wins, as for the training subprocesses (tuner.train.DEFAULT_ENV).
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
