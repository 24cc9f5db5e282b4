"""Constructor-time checks of ``image_size``: clear errors instead of a crash in the first forward pass.

Any size works otherwise (sizes not divisible by the stride included): the models pad or round their grids and
return maps of the input size. Images on disk of any size are resized to ``image_size`` by the pre-processor.
"""

from __future__ import annotations

from anomalib_simplenet.components.blur import blur_margin


def check_input_size(
    image_size: tuple[int, int],
    anomaly_map_sigma: float,
    model: str,
    grid: tuple[int, int] | None = None,
    grid_name: str = "feature map",
) -> None:
    """Raise ``ValueError`` naming ``image_size`` when the model cannot run at that size.

    Args:
        image_size: ``(height, width)`` the model is built for.
        anomaly_map_sigma: σ of the anomaly map's Gaussian smoothing; reflection padding needs sides > 4σ.
        model: model name for the message.
        grid: smallest training-time map that passes through BatchNorm; a 1×1 map cannot train on a batch of
            one image (``Expected more than 1 value per channel``), and a last batch of one happens.
        grid_name: what ``grid`` is, for the message.
    """
    margin = blur_margin(anomaly_map_sigma)
    if min(image_size) <= margin:
        msg = (
            f"{model}: image_size={image_size} is too small for anomaly_map_sigma={anomaly_map_sigma}: the smoothing "
            f"pads {margin} px by reflection, which needs height and width > {margin}; use image_size >= "
            f"{margin + 1} or anomaly_map_sigma <= {(min(image_size) - 1) / 4:.2f}"
        )
        raise ValueError(msg)
    if grid is not None and grid[0] * grid[1] < 2:
        msg = (
            f"{model}: image_size={image_size} gives a 1×1 {grid_name}, on which BatchNorm cannot train with a "
            "batch of one image; use a larger image_size"
        )
        raise ValueError(msg)
