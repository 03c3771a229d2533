"""Shared core of the toolkit: data, models, training engine, checkpoints and distribution."""
