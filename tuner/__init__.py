"""Fine-tuning recipes per task and per GPU: compose, validate, train, make data, evaluate."""
