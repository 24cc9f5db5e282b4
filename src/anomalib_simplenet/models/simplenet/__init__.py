"""SimpleNet model package."""

from .lightning_model import SimpleNet
from .torch_model import SimpleNetModel

__all__ = ["SimpleNet", "SimpleNetModel"]
