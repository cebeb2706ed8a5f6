"""Pretraining on Accelerate, its configuration, validation and the `vlp` command line."""
