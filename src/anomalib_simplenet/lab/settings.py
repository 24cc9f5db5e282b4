"""Hyper-parameter settings of the sweeps and the study, built from the CLI's config overlays in ``configs/``; the
study file's format is in ``docs/measuring.md``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Setting:
    """A named setting: ``configs`` (applied in order, as ``anomalib train --config A --config B``), then
    ``arguments``; ``kind`` is the study's model kind."""

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
    """One setting per variant overlaid on ``configs`` (one named ``base`` when there are no variants), named by
    its file name without the first config's name: ``unet_ae_latent64`` → ``latent64``."""
    for flag, paths in (("--config", configs), ("--variants", variants)):
        if missing := [str(p) for p in paths if not Path(p).is_file()]:
            msg = f"{flag}: no such file: {', '.join(missing)}"
            raise FileNotFoundError(msg)
    if not variants:
        return [Setting("base", tuple(configs))]
    prefix = f"{Path(configs[0]).stem}_"
    settings = [Setting(Path(v).stem.removeprefix(prefix), (*configs, v)) for v in variants]
    names = [s.name for s in settings]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        msg = f"--variants: two files give the same setting name {duplicates}; rename one of them"
        raise ValueError(msg)
    return settings


def load_settings(
    path: Path, kinds: Sequence[str], per_kind: int | None = None, known: Sequence[str] = ()
) -> list[Setting]:
    """The settings of ``kinds`` (in that order) from a study file; ``per_kind``: the first N of each kind;
    ``known``: every kind the file may name (default ``kinds``). A missing file or overlay raises
    ``FileNotFoundError``, a malformed file or a kind without settings ``ValueError``."""
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
            if isinstance(value, dict):
                chosen.append(Setting(str(name), (), kind, {**shared, **value}))
                continue
            if not isinstance(value, str):
                msg = f"{path}: setting {kind}/{name} must be an overlay file name or a mapping of arguments"
                raise ValueError(msg)  # noqa: TRY004 (a malformed file, not a wrong argument type)
            if not (overlay := Path(path).parent / value).is_file():
                raise FileNotFoundError(f"{path}: setting {kind}/{name} names a missing overlay {overlay}")
            chosen.append(Setting(str(name), (overlay,), kind, dict(shared)))
    return chosen
