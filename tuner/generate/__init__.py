"""Synthetic data generation: Magpie instructions and responses from vLLM."""
