"""``report.md`` and ``report.html`` of a study run: the hypothesis in numbers (accuracy: means over the categories
both models were evaluated on; cost: the main category's), then every table and figure, all read from the results."""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anomalib_simplenet.lab.report import fmt, markdown_table, markdown_to_html, metric_cells, metric_header

TARGETS = {"accuracy_gap_pts": -2.0, "latency_ratio": 3.0, "distill_gain_pts": 3.0, "ptq_throughput": 2.0,
           "ptq_drop_pts": -0.5}


def _aurocs(results: Mapping[str, Any], kind: str, teacher: str | None, on_all: bool = False) -> dict[str, float]:
    """Test image AUROC per category of the chosen model of ``kind`` and ``teacher`` (``on_all``: trained on all)."""
    return {r["category"]: r["image_auroc"] for r in results["main"] if r["kind"] == kind
            and r.get("teacher") == teacher and (r["scope"] == "all") == on_all}


def _compare(
    ours: Mapping[str, float], theirs: Mapping[str, float], names: tuple[str, str]
) -> tuple[float | None, str]:
    """Difference of the mean image AUROCs in points over the categories both have, and its detail."""
    common = [c for c in ours if c in theirs]
    if not common:
        return None, f"{names[0]} or {names[1]}: not run"
    mine, other = statistics.fmean(ours[c] for c in common), statistics.fmean(theirs[c] for c in common)
    return 100 * (mine - other), (f"{names[0]} {fmt(mine)}, {names[1]} {fmt(other)} (mean over {len(common)} "
                                  f"categor{'y' if len(common) == 1 else 'ies'}: {', '.join(common)})")


def batch_latency_ms(entry: Mapping[str, Any], record: Mapping[str, Any]) -> float | None:
    """Milliseconds per batch of ``entry["batch_size"]`` images (mean of the throughput runs)."""
    throughput = record["throughput_ips"]
    return 1000 * entry["batch_size"] / throughput if throughput else None


def _latency(record: Mapping[str, Any]) -> str:
    return f"{fmt(record['latency_ms_median'], '.2f')} / {fmt(record['latency_ms_p95'], '.2f')}"


def _check(name: str, target: str, value: float | None, met: bool | None, detail: str) -> dict[str, Any]:
    return {"check": name, "target": target, "value": value, "met": met, "detail": detail}


def hypothesis_checks(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether it was met (``None``: not measurable)."""
    checks = []
    for teacher in results["context"]["teachers"]:
        gap, detail = _compare(_aurocs(results, "distill", teacher), _aurocs(results, "teacher", teacher),
                               ("distilled", "teacher"))
        checks.append(_check(f"{teacher}: distilled student vs teacher-feature reference (image AUROC, points)",
                             "≥ −2", gap, None if gap is None else gap >= TARGETS["accuracy_gap_pts"], detail))
        t_cost, d_cost = (next((c for c in results["cost"] if c["kind"] == kind and c.get("teacher") == teacher), None)
                          for kind in ("teacher", "distill"))
        if t_cost and d_cost:
            (t_rec, t_par), (d_rec, d_par) = ((c["records"][0], c["parameters"]) for c in (t_cost, d_cost))
            latency = t_rec["latency_ms_median"] / d_rec["latency_ms_median"] if d_rec["latency_ms_median"] else None
            t16, d16 = batch_latency_ms(t_cost, t_rec), batch_latency_ms(d_cost, d_rec)
            detail = (f"batch 1: {fmt(t_rec['latency_ms_median'], '.1f')} → {fmt(d_rec['latency_ms_median'], '.1f')} "
                      f"ms; batch {d_cost['batch_size']}: {fmt(t16, '.0f')} → {fmt(d16, '.0f')} ms "
                      f"({fmt(t16 / d16 if t16 and d16 else None, '.2f')}×); GFLOPs {t_cost['flops'] / 1e9:.2f} → "
                      f"{d_cost['flops'] / 1e9:.2f}; size {fmt(t_rec['size_mb'], '.1f')} → "
                      f"{fmt(d_rec['size_mb'], '.1f')} MB; parameters {t_par:,} → {d_par:,}")
        else:
            latency, detail = None, "teacher or distilled model not measured"
        checks.append(_check(f"{teacher}: CPU latency ratio teacher / distilled (torch FP32, batch 1, median)",
                             "≥ 3×", latency, None if latency is None else latency >= TARGETS["latency_ratio"], detail))
        for on_all, label in ((False, "per category"), (True, "all categories")):
            distilled, scratch = _aurocs(results, "distill", teacher, on_all), _aurocs(results, "scratch", None, on_all)
            gain, detail = _compare(distilled, scratch, ("distilled", "scratch"))
            if on_all and gain is None:
                continue
            checks.append(_check(f"{teacher}: distilled − scratch, image AUROC points ({label})", "≥ +3", gain,
                                 None if gain is None else gain >= TARGETS["distill_gain_pts"], detail))
    quantized = next((c for c in results["cost"] if c["quantized"]), None)
    ptq = next((r for r in quantized["records"] if r["variant"].endswith("INT8_PTQ")), None) if quantized else None
    if ptq and ptq["speedup_throughput"] is not None:
        speed, drop = ptq["speedup_throughput"], ptq["image_auroc_delta_pts"]
        checks.append(_check(f"INT8_PTQ of the best model ({quantized['label']}) throughput vs torch FP32", "≥ 2×",
                             speed, speed >= TARGETS["ptq_throughput"], f"{fmt(ptq['throughput_ips'], '.1f')} img/s"))
        checks.append(_check("INT8_PTQ image-AUROC change (points)", "≥ −0.5", drop,
                             None if drop is None else drop >= TARGETS["ptq_drop_pts"], ""))
    else:
        checks.append(_check("INT8_PTQ of the best model", "≥ 2×, ≤ 0.5 pt drop", None, None,
                             f"not measured: {ptq['status'] if ptq else 'no quantized model'}"))
    for space in ("pca", "tsne"):
        entry = results["dbscan"].get(space)
        if entry and entry["metrics"]:
            f1, base = entry["metrics"]["f1"], entry["always_anomalous_f1"]
            checks.append(_check(f"DBSCAN F1 ({space.upper()} space) vs always 'anomalous'", f"> {base:.4f}", f1,
                                 f1 > base, f"precision {fmt(entry['metrics']['precision'])}, recall "
                                 f"{fmt(entry['metrics']['recall'])}"))
    return checks


def _sections(results: Mapping[str, Any], figures: Mapping[str, Path], out: Path) -> list[str]:
    context, q = results["context"], results["context"]["percentile"]
    met = {True: "met", False: "**missed**", None: "not measured"}
    parts = [f"# Distillation study: {', '.join(context['categories'])}\n",
             "\n".join(f"- {k}: {fmt(v) if not isinstance(v, list) else '; '.join(map(str, v))}" for k, v in
                       context.items() if k != "config") + "\n",
             f"## Outcome (accuracy: test image AUROC, mean over categories; cost: {results['main_category']})\n",
             f"The hypothesis is about the first teacher, {context['teachers'][0]}.\n",
             markdown_table(["check", "target", "measured", "outcome", "detail"],
                    [[c["check"], c["target"], fmt(c["value"], ".2f"), met[c["met"]], c["detail"]]
                     for c in results["hypothesis"]]),
             "## Accuracy of the chosen setting of each model (test split)\n",
             f"Settings chosen by validation image AUROC, ties by validation pixel AUROC (validation split disjoint "
               f"from test). Thresholds fixed on "
             f"the validation split: anomalib's F1-adaptive, and the {q:g}th percentile of its normal scores; "
             "FAR = share of normal test images flagged.\n",
             "Raw = the models' own scores; normalised = after anomalib's post-processor (min–max with validation "
             "statistics, clamped to [0, 1]: test images beyond the validation range tie). Map in / outside: mean "
             "raw anomaly-map value on the defect-mask pixels of the defective test images / on their other pixels.\n",
             markdown_table(["category", "model", "trained on", "setting", "val image AUROC raw",
                     *metric_header(results["main"]), "F1 adaptive (FAR)", f"F1 p{q:g} (FAR)",
                     "raw map in / outside defect masks"],
                    [[r["category"], r["title"], "all categories" if r["scope"] == "all" else r["scope"],
                      r["setting"], fmt(r["val_image_auroc"]), *metric_cells(r, results["main"]),
                      f"{fmt(r['adaptive_f1'])} ({fmt(r['adaptive_false_alarm_rate'], '.3f')})",
                      f"{fmt(r['percentile_f1'])} ({fmt(r['percentile_false_alarm_rate'], '.3f')})",
                      f"{fmt(r.get('map_in_mask'))} / {fmt(r.get('map_outside_mask'))}"]
                     for r in results["main"]])]
    parts += [f"## Cost of each chosen model on {results['main_category']} (torch FP32, {context['threads']} CPU "
              "threads)\n",
              f"GFLOPs: one image at {context['image_size']} px through the torch model's eval forward, counted by "
              "torch.utils.flop_counter (a multiply-add = 2 FLOPs; convolutions and matrix products only). Batch 1: "
              "each raw test image at its own size (the exported model resizes it), median / p95. Batch N: batches of "
              "N images already at the input size, mean time per batch. Size: the exported file.\n",
              markdown_table(["model", "parameters", "GFLOPs per image", "size MB", "latency batch 1 ms median / p95",
                              "latency batch N ms (N)", "throughput img/s", "image AUROC normalised (exported)"],
                     [[c["label"], f"{c['parameters']:,}", fmt(c["flops"] / 1e9, ".2f"),
                       fmt(c["records"][0]["size_mb"], ".2f"), _latency(c["records"][0]),
                       f"{fmt(batch_latency_ms(c, c['records'][0]), '.1f')} ({c['batch_size']})",
                       fmt(c["records"][0]["throughput_ips"], ".1f"), fmt(c["records"][0]["image_auroc"])]
                      for c in results["cost"]])]
    quantized = [c for c in results["cost"] if c["quantized"]]
    if quantized:
        parts += ["## Quantization of the best models, side by side\n",
                  markdown_table(["model", "variant", "status", "size MB", "latency ms median / p95", "throughput img/s (×)",
                          "parameters", "image AUROC normalised (Δ pts)"],
                         [[c["label"], r["variant"], r["status"], fmt(r["size_mb"], ".2f"),
                           _latency(r),
                           f"{fmt(r['throughput_ips'], '.1f')} ({fmt(r['speedup_throughput'], '.2f')}×)",
                           f"{c['parameters']:,}",
                           f"{fmt(r['image_auroc'])} ({fmt(r['image_auroc_delta_pts'], '+.2f')})"]
                          for c in quantized for r in c["records"]])]
    dbscan = results["dbscan"]
    if dbscan:
        parts.append(f"## DBSCAN on the embeddings of {dbscan['model']} ({dbscan['category']})\n")
        if "error" in dbscan:
            parts.append(f"Failed: {dbscan['error']}\n")
        rows = [[space.upper(), fmt(d["metrics"].get("precision")), fmt(d["metrics"].get("recall")),
                 fmt(d["metrics"].get("f1")), fmt(d["always_anomalous_f1"]), fmt(d["metrics"].get("auroc")),
                 "; ".join(d["notes"])] for space, d in dbscan.items() if isinstance(d, dict) and "metrics" in d]
        parts.append(markdown_table(["space", "precision", "recall", "F1", "F1 of always 'anomalous'", "AUROC", "notes"],
                            rows))
        for space in ("pca", "tsne"):
            entry = dbscan.get(space)
            for file in entry.get("files", []) if isinstance(entry, dict) else []:
                if Path(file).stem.endswith(space):  # each run plots both planes; show the one it decided in
                    parts.append(f"DBSCAN decided in the {space.upper()} space:\n\n"
                                 f"![DBSCAN {space}]({os.path.relpath(file, out)})\n")
    parts += ["## Training analysis: every setting\n",
              markdown_table(["trained on", "model", "setting", "status", "epochs", "best epoch", "best val loss",
                      "val image AUROC", "val pixel AUROC", "fit s", "chosen", "over-fitting note"],
                     [[r["scope"], r["title"], r["setting"], r["status"] if r["status"] == "ok" else
                       f"failed: {r['error']}", r["epochs"], fmt(r["best_epoch"], "d"), fmt(r["best_val_loss"]),
                       fmt(r["selection_val_image_auroc"]), fmt(r.get("selection_val_pixel_auroc")),
                       fmt(r["fit_s"], ".1f"), "yes" if r["chosen"] else "",
                       r["overfitting"]] for r in results["runs"]])]
    parts.append("## Figures\n")
    parts += [f"### {caption}\n\n![{caption}]({os.path.relpath(path, out)})\n" for caption, path in figures.items()]
    return parts


def write_report(results: Mapping[str, Any], figures: Mapping[str, Path], out: Path) -> list[Path]:
    """Write ``report.md`` and ``report.html`` (figures inline) into ``out``."""
    text = "\n".join(_sections(results, figures, out))
    markdown, html = out / "report.md", out / "report.html"
    markdown.write_text(text)
    html.write_text(markdown_to_html(text, out, title=f"Distillation study: {results['main_category']}"))
    return [markdown, html]
