"""mertlab: MERT-style self-supervised music pre-training."""

__version__ = "0.1.0"
