"""Fine-tuning recipes per task and per GPU: composition, validation, training, data and evaluation."""
