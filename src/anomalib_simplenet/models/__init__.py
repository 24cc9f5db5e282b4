"""Anomaly-detection models of the plugin."""

from .simplenet import SimpleNet

__all__ = ["SimpleNet"]
