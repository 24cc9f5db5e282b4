"""The study, step by step: data → every setting fitted per category (and on all categories) → chosen settings →
metrics and ROC curves → cost and quantization → DBSCAN → report. Everything lands in one run folder.

The kinds that use a pretrained network (``teacher``, ``distill``) are fitted once per teacher network; the first
teacher is the one the hypothesis is about. A run too long for one session is split (one category per run, the
all-categories classifier as its own run with ``per_category=False``) and merged by :mod:`.merge`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from anomalib_simplenet.lab.data import datamodule as category_datamodule
from anomalib_simplenet.lab.data import prepare_categories, union_datamodule
from anomalib_simplenet.lab.figures import plot_report
from anomalib_simplenet.lab.fit import FitResult, overfitting_note
from anomalib_simplenet.lab.scores import evaluate, predict, roc_points
from anomalib_simplenet.lab.settings import Setting

from . import figures
from .clusters import run_dbscan
from .cost import measure_model
from .report import hypothesis_checks, write_report
from .settings import KIND_TITLES, KINDS, resolve_init_args, study_settings
from .training import fit_setting, weights_line

ALL = "all"  # scope of the models trained on all categories at once
TEACHER_KINDS = ("teacher", "distill")  # kinds fitted once per teacher network


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


@dataclass
class Candidate:
    """A fitted setting, its metrics per category and (while it may still be chosen) the model itself."""

    setting: Setting
    scope: str
    init_args: dict[str, Any]
    fit: FitResult
    weights: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    roc: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    teacher: str | None = None  # the teacher network of kinds that use one
    wall_s: float = math.nan  # fit and evaluation

    @property
    def key(self) -> str:
        """Which model this is a setting of: the kind, with its teacher network (``distill@inception_v3``)."""
        return f"{self.setting.kind}@{self.teacher}" if self.teacher else self.setting.kind

    @property
    def label(self) -> str:
        """``distill/lr1e-3 (inception_v3)``."""
        return f"{self.setting.label} ({self.teacher})" if self.teacher else self.setting.label

    @property
    def title(self) -> str:
        """``DistillClassifier distilled (inception_v3)``."""
        return f"{KIND_TITLES[self.setting.kind]} ({self.teacher})" if self.teacher else KIND_TITLES[self.setting.kind]

    @property
    def selection_score(self) -> float:
        """Mean validation image AUROC over the categories it was evaluated on (NaN-safe: -inf when none)."""
        values = [m["val_image_auroc"] for m in self.metrics.values() if math.isfinite(m["val_image_auroc"])]
        return sum(values) / len(values) if values else -math.inf


def _evaluate(candidate: Candidate, datamodules: dict[str, Any], percentile: float) -> None:
    model = candidate.fit.model
    for category, datamodule in datamodules.items():
        validation = predict(model, datamodule.val_dataloader())
        test = predict(model, datamodule.test_dataloader())
        candidate.metrics[category] = evaluate(validation, test, percentile)
        fpr, tpr = roc_points(test)
        candidate.roc[category] = (fpr.tolist(), tpr.tolist())


def _fit_scope(
    config: StudyConfig, settings: list[Setting], scope: str, datamodule: Any, evaluated_on: dict[str, Any],
    root: Path, categories: Sequence[str] | None,
) -> tuple[list[Candidate], dict[str, Candidate]]:
    """Fit every setting in one scope (those of teacher kinds once per teacher); keep only the best model of each
    kind and teacher (by validation image AUROC)."""
    candidates: list[Candidate] = []
    best: dict[str, Candidate] = {}
    plan = [(s, t) for s in settings for t in (config.teachers if s.kind in TEACHER_KINDS else [None])]
    for index, (setting, teacher) in enumerate(plan, 1):
        candidate = Candidate(setting, scope, {}, FitResult(setting.label, Path()), teacher=teacher)
        _step(f"{scope}: setting {index}/{len(plan)} {candidate.label}")
        run_dir = root / "runs" / scope / candidate.key / setting.name
        try:
            candidate.init_args = resolve_init_args(setting, config.image_size, teacher or config.teachers[0],
                                                    not config.random_teacher, categories)
        except ValueError as error:
            candidate.fit = FitResult(candidate.label, run_dir, status="failed", error=str(error))
            print(f"[study] {scope} {candidate.label} FAILED: {error}", flush=True)
            candidates.append(candidate)
            continue
        started = time.time()
        fit = candidate.fit = fit_setting(setting, candidate.init_args, scope, datamodule, run_dir, config.max_epochs,
                                          config.patience, config.seed)
        candidate.weights = weights_line(fit.model)
        candidates.append(candidate)
        if fit.status == "ok":
            _evaluate(candidate, evaluated_on, config.percentile)
            candidate.wall_s = time.time() - started
            shown = ", ".join(f"{c} val {m['val_image_auroc']:.3f} test {m['image_auroc']:.3f}"
                              for c, m in candidate.metrics.items())
            print(f"[study] {scope} {candidate.label}: image AUROC {shown} ({candidate.wall_s:.0f} s with "
                  "evaluation)", flush=True)
            incumbent = best.get(candidate.key)
            if incumbent is None or candidate.selection_score > incumbent.selection_score:
                if incumbent is not None:
                    incumbent.fit.model = None
                best[candidate.key] = candidate
            else:
                fit.model = None
        gc.collect()
    return candidates, best


def _run_record(candidate: Candidate, chosen: bool) -> dict[str, Any]:
    fit = candidate.fit
    return {
        "kind": candidate.setting.kind, "teacher": candidate.teacher, "title": candidate.title,
        "setting": candidate.setting.name, "scope": candidate.scope,
        "status": fit.status, "error": fit.error, "epochs": len(fit.history), "best_epoch": fit.best_epoch,
        "best_val_loss": fit.best_val_loss, "fit_s": fit.fit_s, "wall_s": candidate.wall_s,
        "weights": candidate.weights, "chosen": chosen,
        "selection_val_image_auroc": candidate.selection_score if candidate.metrics else math.nan,
        "overfitting": overfitting_note(fit.history, fit.best_epoch) if fit.status == "ok" else "",
        "init_args": {k: v for k, v in candidate.init_args.items() if k != "categories"},
        "history": fit.history, "run_dir": str(fit.run_dir), "metrics": candidate.metrics,
    }


def run_study(config: StudyConfig) -> dict[str, Any]:
    """Run the whole study; write ``report.md``, ``report.html``, ``results.json`` and figures to ``output``."""
    started = time.time()
    out = Path(config.output)
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

    candidates: list[Candidate] = []
    chosen: dict[str, dict[str, Candidate]] = {}
    for category, datamodule in datamodules.items() if config.per_category else ():
        found, best = _fit_scope(config, settings, category, datamodule, {category: datamodule}, out, None)
        candidates += found
        chosen[category] = best
    classifier_settings = [s for s in settings if s.kind in ("scratch", "distill")]
    if config.all_categories and len(config.categories) > 1 and classifier_settings:
        union = union_datamodule(root, config.categories, size, config.batch_size, config.seed)
        found, best = _fit_scope(config, classifier_settings, ALL, union, datamodules, out, config.categories)
        candidates += found
        chosen[ALL] = best

    chosen_ids = {id(c) for best in chosen.values() for c in best.values()}
    runs = [_run_record(c, id(c) in chosen_ids) for c in candidates]
    main = [
        {"category": category, "scope": scope, "kind": c.setting.kind, "teacher": c.teacher, "title": c.title,
         "setting": c.setting.name, **c.metrics[category]}
        for scope, best in chosen.items() for c in best.values() for category in c.metrics
    ]
    _step("figures: ROC curves, loss curves, reconstructions")
    figure_files = figures.write_all(out / "figures", chosen, candidates, datamodules)

    main_category = config.categories[0]
    on_main = sorted(chosen.get(main_category, {}).values(), key=lambda c: c.selection_score, reverse=True)
    cost: list[dict[str, Any]] = []
    for rank, candidate in enumerate(on_main):
        label = candidate.label
        quantize = rank < config.quantize_top
        _step(f"cost of {label} on {main_category}" + (" (with OpenVINO variants)" if quantize else ""))
        result = measure_model(label, candidate.fit.model, datamodules[main_category],
                               out / "exports" / candidate.key, quantize, config.threads,
                               config.throughput_seconds)
        cost.append({"label": label, "kind": candidate.setting.kind, "teacher": candidate.teacher,
                     "parameters": result.parameters, "flops": result.flops, "batch_size": result.batch_size,
                     "quantized": quantize, "records": result.records})
        if quantize:
            figure_files[f"quantization {label}"] = plot_report(
                result.records, out / "figures" / f"quantization_{candidate.key}.png", label)

    dbscan: dict[str, Any] = {}
    if on_main:
        best = on_main[0]
        _step(f"DBSCAN on the embeddings of {best.label} ({main_category})")
        try:
            dbscan = {"model": best.label, "category": main_category,
                      **run_dbscan(best.fit.model, datamodules[main_category], out / "dbscan",
                                   config.dbscan_min_samples, config.seed)}
        except Exception as error:  # noqa: BLE001 - the report says it failed
            dbscan = {"model": best.label, "category": main_category, "error": repr(error)}

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
