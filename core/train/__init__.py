"""Masked multi-task pre-training: the LightningModule, schedules and the `train` entry point."""
