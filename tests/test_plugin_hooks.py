"""The hooks the plugin's shared parts ask every model: declared on PluginModuleMixin, overridden by SimpleNet."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from anomalib_simplenet.components.pre_processing import imagenet_pre_processor
from anomalib_simplenet.models.plugin_module import PluginModuleMixin


class _CachedModel(PluginModuleMixin):
    """A plugin model whose every training batch is served from a feature cache."""

    def needs_train_images(self, batch: object) -> bool:
        del batch
        return False


def _batch() -> SimpleNamespace:
    return SimpleNamespace(image=torch.rand(2, 3, 40, 40), gt_mask=None)


def test_base_defaults_read_every_image_and_let_lightning_deal_shards() -> None:
    model = PluginModuleMixin()
    assert model.needs_train_images(_batch()) is True
    assert model.fixed_train_shards is False


def test_pre_processor_skips_only_the_batches_a_plugin_model_does_not_read() -> None:
    pre_processor = imagenet_pre_processor(32)
    read = _batch()
    pre_processor.on_train_batch_start(None, PluginModuleMixin(), read, 0)
    assert read.image.shape[-2:] == (32, 32)
    skipped = _batch()
    pre_processor.on_train_batch_start(None, _CachedModel(), skipped, 0)
    assert skipped.image.shape[-2:] == (40, 40)


def test_pre_processor_transforms_for_other_anomalib_modules() -> None:
    pre_processor = imagenet_pre_processor(32)
    batch = _batch()
    pre_processor.on_train_batch_start(None, torch.nn.Module(), batch, 0)  # no plugin hooks at all
    assert batch.image.shape[-2:] == (32, 32)


def test_simplenet_reads_images_until_their_features_are_cached() -> None:
    from anomalib_simplenet import SimpleNet

    model = SimpleNet(backbone="resnet18", pre_trained=False, image_size=64, feature_cache="memory")
    assert model.fixed_train_shards is True
    assert model.needs_train_images(SimpleNamespace(image_path=["a.png"])) is True  # nothing cached yet
    uncached = SimpleNet(backbone="resnet18", pre_trained=False, image_size=64, feature_cache=False)
    assert uncached.fixed_train_shards is False
