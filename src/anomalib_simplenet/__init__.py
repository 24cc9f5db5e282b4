"""anomalib-simplenet: SimpleNet and companion anomaly-detection models for anomalib 2.x.

Importing this package registers its models with anomalib, so ``anomalib.models.get_model("simplenet")``
and ``anomalib train --model SimpleNet`` find them (the installed ``.pth`` hook does the import for the CLI).
"""

from anomalib_simplenet.models import SimpleNet
from anomalib_simplenet.models import UNetAE
from anomalib_simplenet.models import DistillClassifier

__version__ = "0.1.0"
__all__ = ["SimpleNet", "UNetAE", "DistillClassifier"]
