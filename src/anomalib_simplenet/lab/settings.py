"""Hyper-parameter settings: one type for the sweeps and the study, built from the CLI overlays in ``configs/``.

A setting is a name plus config files applied in order (as ``anomalib train --config A --config B``) and, for the
study, its model kind and arguments set on top. The variations themselves (learning rates, bottleneck sizes …)
live once, as the overlays the CLI uses (``configs/<model>_<variation>.yaml``); the study's file
(``configs/study.yaml``) names them per model kind::

    distill:
      init_args: {image_score: map_max}            # shared by every setting of the kind
      settings:
        lr1e-3: distill_classifier_lr1e-3.yaml     # an overlay beside this file (its model.init_args) ...
    teacher:
      settings:
        s8: {levels: [2]}                          # ... or the arguments themselves
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Setting:
    """A named setting: ``configs`` (later files win), then ``arguments``; ``kind`` is the study's model kind."""

    name: str
    configs: tuple[Path, ...] = ()
    kind: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``distill/lr1e-3`` (just the name without a kind)."""
        return f"{self.kind}/{self.name}" if self.kind else self.name

    @property
    def init_args(self) -> dict[str, Any]:
        """The model's constructor arguments: ``model.init_args`` of every config in order, then ``arguments``."""
        merged: dict[str, Any] = {}
        for path in self.configs:
            model = (yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}
            init_args = model.get("init_args") if isinstance(model, dict) else None
            if init_args is not None and not isinstance(init_args, dict):
                msg = f"{path}: model.init_args must be a mapping"
                raise ValueError(msg)
            merged.update(init_args or {})
        return {**merged, **self.arguments}


def make_settings(configs: Sequence[Path], variants: Sequence[Path]) -> list[Setting]:
    """One setting per variant overlaid on ``configs`` (one named ``base`` when there are no variants).

    A variant is named by its file name without the first config's name: ``unet_ae_latent64`` → ``latent64``.
    """
    for flag, paths in (("--config", configs), ("--variants", variants)):
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            msg = f"{flag}: no such file: {', '.join(missing)}"
            raise FileNotFoundError(msg)
    if not variants:
        return [Setting("base", tuple(configs))]
    prefix = f"{Path(configs[0]).stem}_"
    settings = [Setting(Path(v).stem.removeprefix(prefix), (*configs, v)) for v in variants]
    names = [s.name for s in settings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        msg = f"--variants: two files give the same setting name {duplicates}; rename one of them"
        raise ValueError(msg)
    return settings


def load_settings(
    path: Path, kinds: Sequence[str], per_kind: int | None = None, known: Sequence[str] = ()
) -> list[Setting]:
    """The settings of ``kinds`` (in that order) from a study file (see the module docstring); ``per_kind``: the
    first N of each kind; ``known``: every kind the file may name (default ``kinds``).

    Raises:
        FileNotFoundError: no such file, or an overlay it names is missing.
        ValueError: the file is malformed or has no setting of a requested kind.
    """
    if not Path(path).is_file():
        msg = f"--settings: no such file {path}"
        raise FileNotFoundError(msg)
    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(data) - set(known or kinds)) if isinstance(data, dict) else ["(not a mapping)"]
    if unknown:
        msg = f"{path}: unknown model kind(s) {unknown}; choose from {list(known or kinds)}"
        raise ValueError(msg)
    chosen: list[Setting] = []
    for kind in kinds:
        entry = data.get(kind)
        if not isinstance(entry, dict) or not isinstance(entry.get("settings"), dict) or not entry["settings"]:
            msg = f"{path}: needs a mapping '{kind}' with a non-empty mapping 'settings' (name: overlay or arguments)"
            raise ValueError(msg)
        shared = entry.get("init_args") or {}
        for name, value in list(entry["settings"].items())[:per_kind]:
            if isinstance(value, str):
                overlay = Path(path).parent / value
                if not overlay.is_file():
                    msg = f"{path}: setting {kind}/{name} names a missing overlay {overlay}"
                    raise FileNotFoundError(msg)
                chosen.append(Setting(str(name), (overlay,), kind, dict(shared)))
            elif isinstance(value, dict):
                chosen.append(Setting(str(name), (), kind, {**shared, **value}))
            else:
                msg = f"{path}: setting {kind}/{name} must be an overlay file name or a mapping of arguments"
                raise ValueError(msg)
    return chosen
