"""Lightning callbacks of the plugin (imported on demand: ``import anomalib_simplenet`` does not load them)."""

from .dbscan import DBSCANPostProcessor
from .early_stopping import EarlyStoppingOnceMoved

__all__ = ["DBSCANPostProcessor", "EarlyStoppingOnceMoved"]
