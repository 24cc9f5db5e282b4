"""Save input | reconstruction | anomaly map side by side, as a function and as a small Lightning callback."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib import colormaps
from PIL import Image
from torchvision.utils import make_grid

from .torch_model import UNetAEModel


def _unwrap(model: UNetAEModel | LightningModule) -> UNetAEModel:
    network = getattr(model, "model", model)
    if not isinstance(network, UNetAEModel):
        msg = f"model must be a UNetAEModel or a UNetAE, got {type(model).__name__}"
        raise TypeError(msg)
    return network


@torch.no_grad()
def reconstruction_grid(model: UNetAEModel | LightningModule, images: torch.Tensor) -> torch.Tensor:
    """Grid ``(3, H', W')`` in ``[0, 1]``: one row per image ``(N, C, H, W)``: input | reconstruction | map.

    ``images`` are model inputs (pre-processed, in ``[0, 1]``). The anomaly map is drawn with the ``jet``
    colour map on one scale for the whole grid (0 … its maximum), so rows can be compared.
    """
    network = _unwrap(model)
    if images.dim() != 4:
        msg = f"images must be (N, C, H, W), got shape {tuple(images.shape)}"
        raise ValueError(msg)
    was_training = network.training
    network.eval()
    images = images.to(next(network.parameters()).device)
    reconstruction = network.reconstruct(images)
    anomaly_map = network.anomaly_map_generator(images, reconstruction)[:, 0]
    network.train(was_training)
    scaled = (anomaly_map / anomaly_map.max().clamp_min(1e-8)).cpu().numpy()
    coloured = torch.from_numpy(colormaps["jet"](scaled)[..., :3]).permute(0, 3, 1, 2).float()
    rows = [torch.stack([x.cpu(), r.cpu(), m]) for x, r, m in zip(images, reconstruction, coloured, strict=True)]
    return make_grid(torch.cat(rows).expand(-1, 3, -1, -1), nrow=3, padding=2, pad_value=1.0)


def save_reconstructions(model: UNetAEModel | LightningModule, images: torch.Tensor, path: str | Path) -> Path:
    """Write :func:`reconstruction_grid` of ``images`` ``(N, C, H, W)`` as a PNG at ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = reconstruction_grid(model, images)
    Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")).save(path)
    return path


class ReconstructionSaver(Callback):
    """Save the first validation batch's grid every ``every_n_epochs`` to ``<root>/reconstructions/``.

    Args:
        every_n_epochs: epoch interval.
        num_images: images taken from the batch.
        dirname: sub-folder of the trainer's ``default_root_dir``.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, dirname: str = "reconstructions") -> None:
        if every_n_epochs < 1 or num_images < 1:
            msg = f"every_n_epochs and num_images must be >= 1, got {every_n_epochs} and {num_images}"
            raise ValueError(msg)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.dirname = dirname

    def on_validation_batch_end(  # noqa: PLR0913 - Lightning's signature
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """On batch 0 of a matching epoch, save the (already pre-processed) images' grid."""
        del outputs, dataloader_idx
        if batch_idx != 0 or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        path = Path(trainer.default_root_dir) / self.dirname / f"epoch_{trainer.current_epoch:03d}.png"
        save_reconstructions(pl_module, batch.image[: self.num_images], path)
