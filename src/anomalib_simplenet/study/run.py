"""The study, step by step: data → every setting fitted per category (and on all categories) → the setting of best
validation image AUROC per model (ties: validation pixel AUROC) → test metrics and ROC curves → cost and
quantization → DBSCAN → report.

Kinds that use a pretrained network (``teacher``, ``distill``) are fitted once per teacher network; the first
teacher is the one the hypothesis is about. A long study is split into runs and merged by :mod:`.merge`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data import AnomalibDataModule
from anomalib.engine import Engine
from anomalib.models import AnomalibModule

from anomalib_simplenet.callbacks import DBSCANPostProcessor
from anomalib_simplenet.lab.data import datamodule as category_datamodule
from anomalib_simplenet.lab.data import images_by_label, prepare_categories, union_datamodule
from anomalib_simplenet.lab.export import TORCH_FP32, measure_variants, select_variants
from anomalib_simplenet.lab.figures import loss_figure, plot_report, roc_figure
from anomalib_simplenet.lab.fit import FitResult
from anomalib_simplenet.lab.flops import forward_flops
from anomalib_simplenet.lab.scores import evaluate, predict, roc_points
from anomalib_simplenet.lab.settings import Setting
from anomalib_simplenet.lab.weights import weights_description
from anomalib_simplenet.models.unet_ae import save_reconstructions

from .candidates import Candidate, mask_contrast, run_record
from .report import hypothesis_checks, write_report
from .settings import KINDS, fit_setting, resolve_init_args, study_settings

ALL = "all"  # scope of the models trained on all categories at once
TEACHER_KINDS = ("teacher", "distill", "simplenet")  # kinds fitted once per teacher network


@dataclass
class StudyConfig:
    """Everything a study run needs (the command line's options)."""

    output: Path
    categories: Sequence[str] = ("magnetic_tile",)
    data_root: Path | None = None
    settings_file: Path = Path("configs/study.yaml")
    kinds: Sequence[str] = KINDS
    per_kind: int | None = None
    teachers: Sequence[str] = ("efficientnet_lite0",)
    random_teacher: bool = False
    image_size: int = 256
    max_train: int | None = None
    max_test: int | None = None
    max_epochs: int = 30
    patience: int = 5
    batch_size: int = 16
    percentile: float = 95.0
    quantize_top: int = 3
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    throughput_seconds: float = 3.0
    dbscan_min_samples: int = 5
    all_categories: bool = True
    per_category: bool = True
    seed: int = 42
    command: str = ""


def _step(message: str) -> None:
    print(f"==> [study] {message}", flush=True)


def _fit_scope(
    config: StudyConfig, settings: list[Setting], scope: str, datamodule: Any, evaluated_on: dict[str, Any],
    root: Path, categories: Sequence[str] | None,
) -> tuple[list[Candidate], dict[str, Candidate]]:
    """Fit every setting in one scope (teacher kinds once per teacher) and evaluate it on ``evaluated_on``; keep the
    model only of the best setting of each kind and teacher (by validation image AUROC)."""
    candidates: list[Candidate] = []
    best: dict[str, Candidate] = {}
    plan = [(s, t) for s in settings for t in (config.teachers if s.kind in TEACHER_KINDS else [None])]
    for index, (setting, teacher) in enumerate(plan, 1):
        candidate = Candidate(setting, scope, FitResult(setting.label, Path()), teacher)
        candidates.append(candidate)
        _step(f"{scope}: setting {index}/{len(plan)} {candidate.label}")
        run_dir = root / "runs" / scope / candidate.key / setting.name
        try:
            candidate.init_args = resolve_init_args(setting, config.image_size, teacher or config.teachers[0],
                                                    not config.random_teacher, categories)
        except ValueError as error:
            candidate.fit = FitResult(candidate.label, run_dir, status="failed", error=str(error))
            print(f"[study] {scope} {candidate.label} FAILED: {error}", flush=True)
            continue
        started = time.time()
        fit = candidate.fit = fit_setting(setting, candidate.init_args, scope, datamodule, run_dir, config.max_epochs,
                                          config.patience, config.seed)
        candidate.weights = "" if fit.model is None else weights_description(fit.model)
        if fit.status == "ok":
            for category, data in evaluated_on.items():
                test = predict(fit.model, data.test_dataloader())
                candidate.metrics[category] = {**evaluate(predict(fit.model, data.val_dataloader()), test,
                                                          config.percentile), **mask_contrast(test)}
                candidate.roc[category] = tuple(points.tolist() for points in roc_points(test))
            candidate.wall_s = time.time() - started
            shown = ", ".join(f"{c} val {m['val_image_auroc']:.3f} test {m['image_auroc']:.3f}"
                              for c, m in candidate.metrics.items())
            print(f"[study] {scope} {candidate.label}: image AUROC {shown} ({candidate.wall_s:.0f} s with "
                  "evaluation)", flush=True)
            incumbent = best.get(candidate.key)
            if incumbent is None or candidate.selection_score > incumbent.selection_score:
                best[candidate.key], loser = candidate, incumbent
            else:
                loser = candidate
            if loser is not None:
                loser.fit.model = None  # only the chosen models are kept in memory
        gc.collect()
    return candidates, best


def write_figures(
    folder: Path, chosen: Mapping[str, Mapping[str, Candidate]], candidates: list[Candidate], datamodules: Mapping
) -> dict[str, Path]:
    """ROC curves of the chosen models, loss curves of every setting per model, UNetAE reconstructions; return
    ``caption → path``."""
    files: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for category in datamodules:
        curves = {f"{c.title}{' [all categories]' if scope != category else ''}":
                  (*c.roc[category], c.metrics[category]["image_auroc"])
                  for scope, best in chosen.items() for c in best.values() if category in c.roc}
        if curves:
            files[f"ROC {category}"] = roc_figure(curves, folder / f"roc_{category}.png", f"test ROC, {category}")
    groups: dict[tuple[str, str, str], dict[str, list]] = {}
    for c in candidates:
        if c.fit.history and any(not math.isnan(row["val_loss"]) for row in c.fit.history):
            groups.setdefault((c.scope, c.key, c.title), {})[c.setting.name] = c.fit.history
    for (scope, key, title), histories in groups.items():
        files[f"loss curves {scope} {key}"] = path = folder / f"loss_{scope}_{key}.png"
        loss_figure(histories, title=f"{scope}: {title}").savefig(path, dpi=80)
    for category, datamodule in datamodules.items():
        candidate = chosen.get(category, {}).get("unet_ae")
        if candidate is not None and candidate.fit.model is not None:
            model = candidate.fit.model
            normal, defective = images_by_label(datamodule.test_dataloader(), 2, 2,
                                                getattr(model.pre_processor, "transform", None))
            files[f"UNetAE reconstructions {category} (rows: 2 normal, 2 defective; input | reconstruction | "
                  "error map)"] = save_reconstructions(model, torch.stack(normal + defective),
                                                       folder / f"reconstructions_{category}.png")
    return files


def measure_cost(
    label: str, model: AnomalibModule, datamodule: AnomalibDataModule, out: Path, quantize: bool, threads: int,
    throughput_seconds: float, batch_size: int = 16,
) -> dict[str, Any]:
    """Export ``model`` as torch FP32 (and, with ``quantize``, OpenVINO FP32/FP16/INT8/INT8_PTQ) and measure each
    variant (:func:`..lab.export.measure_variants`); also parameters and FLOPs of one image at the input size.
    ``records[0]`` is torch FP32; per-image scores are dropped."""
    variants = select_variants() if quantize else [TORCH_FP32]
    records = measure_variants(model, variants, out, datamodule, threads, throughput_seconds, 3, batch_size,
                               label=label)
    for record in records:
        record.pop("scores", None)
    return {"label": label, "parameters": sum(p.numel() for p in model.model.parameters()),
            "flops": forward_flops(model.model, tuple(int(s) for s in model.input_size)), "batch_size": batch_size,
            "records": records}


def run_dbscan(model: AnomalibModule, datamodule: Any, out: Path, min_samples: int, seed: int) -> dict[str, Any]:
    """Test ``model`` with :class:`DBSCANPostProcessor` in report mode, clustering in PCA and in t-SNE space; per
    space its metrics, notes, plots and the F1 of answering "anomalous" for every image (``2p / (1 + p)``)."""
    results = {}
    for space in ("pca", "tsne"):
        callback = DBSCANPostProcessor(mode="report", cluster_space=space, min_samples=min_samples,
                                       output_dir=out / space, seed=seed)
        Engine(callbacks=[callback], default_root_dir=out / space / "engine", logger=False, accelerator="cpu",
               devices=1, enable_progress_bar=False).test(model, datamodule=datamodule, verbose=False)
        share = float(np.mean([int(row.get("gt_label", 0)) == 1 for row in callback.results]))
        results[space] = {"metrics": dict(callback.metrics), "notes": list(getattr(callback, "messages", [])),
                          "always_anomalous_f1": 2 * share / (1 + share) if share > 0 else 0.0,
                          "files": sorted(str(p) for p in (out / space).glob("*.png"))}
    return results


def run_study(config: StudyConfig) -> dict[str, Any]:
    """Run the whole study; write ``report.md``, ``report.html``, ``results.json`` and figures to ``output``."""
    started, out = time.time(), Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    _step(f"data: {', '.join(config.categories)}")
    root, data_notes = prepare_categories(config.data_root, config.categories, out / "data", config.max_train,
                                          config.max_test)
    settings = study_settings(Path(config.settings_file), config.kinds, config.per_kind)
    size = (config.image_size, config.image_size)
    datamodules = {c: category_datamodule(root, c, size, config.batch_size, config.seed) for c in config.categories}
    for datamodule in datamodules.values():
        datamodule.setup()
    scopes = [(c, settings, d, {c: d}, None) for c, d in datamodules.items()] if config.per_category else []
    classifier_settings = [s for s in settings if s.kind in ("scratch", "distill")]
    if config.all_categories and len(config.categories) > 1 and classifier_settings:
        union = union_datamodule(root, config.categories, size, config.batch_size, config.seed)
        scopes.append((ALL, classifier_settings, union, datamodules, config.categories))
    candidates: list[Candidate] = []
    chosen: dict[str, dict[str, Candidate]] = {}
    for scope, scope_settings, data, evaluated_on, categories in scopes:
        found, chosen[scope] = _fit_scope(config, scope_settings, scope, data, evaluated_on, out, categories)
        candidates += found
    chosen_ids = {id(c) for best in chosen.values() for c in best.values()}
    runs = [run_record(c, id(c) in chosen_ids) for c in candidates]
    main = [{"category": category, "scope": scope, "kind": c.setting.kind, "teacher": c.teacher, "title": c.title,
             "setting": c.setting.name, **c.metrics[category]}
            for scope, best in chosen.items() for c in best.values() for category in c.metrics]
    _step("figures: ROC curves, loss curves, reconstructions")
    figure_files = write_figures(out / "figures", chosen, candidates, datamodules)

    main_category = config.categories[0]
    on_main = sorted(chosen.get(main_category, {}).values(), key=lambda c: c.selection_score, reverse=True)
    cost: list[dict[str, Any]] = []
    for rank, candidate in enumerate(on_main):
        label, quantize = candidate.label, rank < config.quantize_top
        _step(f"cost of {label} on {main_category}" + (" (with OpenVINO variants)" if quantize else ""))
        cost.append({"kind": candidate.setting.kind, "teacher": candidate.teacher, "quantized": quantize,
                     **measure_cost(label, candidate.fit.model, datamodules[main_category],
                                    out / "exports" / candidate.key, quantize, config.threads,
                                    config.throughput_seconds)})
        if quantize:
            figure_files[f"quantization {label}"] = plot_report(
                cost[-1]["records"], out / "figures" / f"quantization_{candidate.key}.png", label)
    dbscan: dict[str, Any] = {}
    if on_main:
        dbscan = {"model": on_main[0].label, "category": main_category}
        _step(f"DBSCAN on the embeddings of {on_main[0].label} ({main_category})")
        try:
            dbscan.update(run_dbscan(on_main[0].fit.model, datamodules[main_category], out / "dbscan",
                                     config.dbscan_min_samples, config.seed))
        except Exception as error:  # noqa: BLE001 - the report says it failed
            dbscan["error"] = repr(error)

    context = {
        "command": config.command, "categories": list(config.categories), "data": data_notes,
        "teachers": list(config.teachers),
        "teacher_weights": "RANDOM weights: plumbing only" if config.random_teacher else "pretrained",
        "settings_sha256": hashlib.sha256(Path(config.settings_file).read_bytes()).hexdigest(),
        "weights": sorted({r["weights"] for r in runs if r["weights"]}),
        "image_size": config.image_size, "max_epochs": config.max_epochs, "patience": config.patience,
        "percentile": config.percentile, "threads": config.threads, "seed": config.seed,
        "config": {k: str(v) for k, v in asdict(config).items()},
    }
    results = {"context": context, "runs": runs, "main": main, "cost": cost, "dbscan": dbscan,
               "main_category": main_category, "figures": {k: str(v) for k, v in figure_files.items()}}
    context["wall_time_s"] = round(time.time() - started, 1)
    paths = finish(results, out)
    _step(f"report: {', '.join(str(p) for p in paths)} (wall time {context['wall_time_s']:.0f} s)")
    return results


def finish(results: dict[str, Any], out: Path) -> list[Path]:
    """Add the hypothesis checks; write ``results.json``, ``report.md`` and ``report.html`` into ``out``."""
    results["hypothesis"] = hypothesis_checks(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return write_report(results, {k: Path(v) for k, v in results["figures"].items()}, out)
