"""Make anomalib_simplenet's models visible to the plain ``anomalib`` CLI, at no start-up cost.

anomalib has no plugin entry point: its CLI (jsonargparse) and ``anomalib.models.get_model`` resolve a short
name such as ``SimpleNet`` among the ``AnomalibModule`` subclasses that are already imported. This module is
imported by a ``.pth`` file at interpreter start-up; it imports nothing heavy. It only adds a meta-path finder
that, once ``anomalib.models`` has finished importing, imports ``anomalib_simplenet`` so that our classes
exist when the CLI looks for them. Programs that never import anomalib pay for one small finder object.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

_TRIGGER = "anomalib.models"
_PLUGIN = "anomalib_simplenet"


class _LoaderThenPlugin(importlib.abc.Loader):
    """Run the real loader of ``anomalib.models``, then import the plugin."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            __import__(_PLUGIN)
        except Exception as error:  # noqa: BLE001 - a broken plugin must never break anomalib itself
            warnings.warn(f"anomalib_simplenet could not be registered with anomalib: {error!r}", stacklevel=2)


class _AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that only reacts to ``anomalib.models``."""

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001, ANN201
        if fullname != _TRIGGER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _LoaderThenPlugin(spec.loader)
                return spec
        return None


def install() -> None:
    """Install the finder once (idempotent)."""
    if any(isinstance(finder, _AnomalibModelsFinder) for finder in sys.meta_path):
        return
    if _TRIGGER in sys.modules:  # anomalib.models already imported: register right away
        __import__(_PLUGIN)
        return
    sys.meta_path.insert(0, _AnomalibModelsFinder())


install()
