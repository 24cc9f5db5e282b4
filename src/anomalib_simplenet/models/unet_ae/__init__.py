"""UNetAE model package."""

from .lightning_model import UNetAE
from .reconstruction import ReconstructionSaver, save_reconstructions
from .torch_model import UNetAEModel

__all__ = ["ReconstructionSaver", "UNetAE", "UNetAEModel", "save_reconstructions"]
