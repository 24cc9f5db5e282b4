"""``report.md`` (and ``report.html``) of a study run: the hypothesis in numbers, then every table and figure.

Every number is read from the run's results (``results.json`` holds the same values); nothing is typed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anomalib_simplenet.lab.report import fmt, markdown_table, markdown_to_html, metric_cells, metric_header

from .settings import KIND_TITLES

TARGETS = {"accuracy_gap_pts": -2.0, "latency_ratio": 3.0, "distill_gain_pts": 3.0, "ptq_throughput": 2.0,
           "ptq_drop_pts": -0.5}


def _row(results: Mapping[str, Any], kind: str, scope: str | None = None) -> dict[str, Any] | None:
    category = results["main_category"]
    scope = scope or category
    return next((r for r in results["main"] if r["category"] == category and r["scope"] == scope
                 and r["kind"] == kind), None)


def _torch_record(results: Mapping[str, Any], kind: str) -> tuple[dict[str, Any], int] | None:
    entry = next((c for c in results["cost"] if c["kind"] == kind), None)
    return (entry["records"][0], entry["parameters"]) if entry else None


def _auroc(row: Mapping[str, Any] | None) -> str:
    return fmt(row["image_auroc"]) if row else "not run"


def _latency(record: Mapping[str, Any]) -> str:
    return f"{fmt(record['latency_ms_median'], '.2f')} / {fmt(record['latency_ms_p95'], '.2f')}"


def _check(name: str, target: str, value: float | None, met: bool | None, detail: str) -> dict[str, Any]:
    return {"check": name, "target": target, "value": value, "met": met, "detail": detail}


def hypothesis_checks(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether it was met (``None``: not measurable)."""
    checks = []
    teacher, distill, scratch = (_row(results, k) for k in ("teacher", "distill", "scratch"))
    gap = 100 * (distill["image_auroc"] - teacher["image_auroc"]) if teacher and distill else None
    detail = f"distilled {_auroc(distill)}, teacher {_auroc(teacher)}"
    checks.append(_check("distilled student vs teacher-feature reference (image AUROC, points)",
                         "≥ −2", gap, None if gap is None else gap >= TARGETS["accuracy_gap_pts"], detail))
    costs = {k: _torch_record(results, k) for k in ("teacher", "distill")}
    if all(costs.values()):
        (t_rec, t_par), (d_rec, d_par) = costs["teacher"], costs["distill"]
        latency = t_rec["latency_ms_median"] / d_rec["latency_ms_median"] if d_rec["latency_ms_median"] else None
        detail = (f"latency {fmt(t_rec['latency_ms_median'], '.1f')} → {fmt(d_rec['latency_ms_median'], '.1f')} ms; "
                  f"size {fmt(t_rec['size_mb'], '.1f')} → {fmt(d_rec['size_mb'], '.1f')} MB "
                  f"({fmt(t_rec['size_mb'] / d_rec['size_mb'] if d_rec['size_mb'] else None, '.2f')}×); parameters "
                  f"{t_par:,} → {d_par:,} ({fmt(t_par / d_par if d_par else None, '.2f')}×)")
    else:
        latency, detail = None, "teacher or distilled model not measured"
    checks.append(_check("CPU latency ratio teacher / distilled (torch FP32, batch 1, median)", "≥ 3×", latency,
                         None if latency is None else latency >= TARGETS["latency_ratio"], detail))
    for scope, label in ((None, "per category"), ("all", "all categories")):
        d, s = _row(results, "distill", scope), _row(results, "scratch", scope)
        gain = 100 * (d["image_auroc"] - s["image_auroc"]) if d and s else None
        if scope == "all" and gain is None:
            continue
        checks.append(_check(f"distilled − scratch, image AUROC points ({label})", "≥ +3", gain,
                             None if gain is None else gain >= TARGETS["distill_gain_pts"],
                             f"distilled {_auroc(d)}, scratch {_auroc(s)}"))
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
             f"## Outcome on {results['main_category']}\n",
             markdown_table(["check", "target", "measured", "outcome", "detail"],
                    [[c["check"], c["target"], fmt(c["value"], ".2f"), met[c["met"]], c["detail"]]
                     for c in results["hypothesis"]]),
             "## Accuracy of the chosen setting of each model (test split)\n",
             f"Settings chosen by validation image AUROC (validation split disjoint from test). Thresholds fixed on "
             f"the validation split: anomalib's F1-adaptive, and the {q:g}th percentile of its normal scores; "
             "FAR = share of normal test images flagged.\n",
             "Raw = the models' own scores; normalised = after anomalib's post-processor (min–max with validation "
             "statistics, clamped to [0, 1]: test images beyond the validation range tie).\n",
             markdown_table(["category", "model", "trained on", "setting", "val image AUROC raw",
                     *metric_header(results["main"]), "F1 adaptive (FAR)", f"F1 p{q:g} (FAR)"],
                    [[r["category"], KIND_TITLES[r["kind"]], "all categories" if r["scope"] == "all" else r["scope"],
                      r["setting"], fmt(r["val_image_auroc"]), *metric_cells(r, results["main"]),
                      f"{fmt(r['adaptive_f1'])} ({fmt(r['adaptive_false_alarm_rate'], '.3f')})",
                      f"{fmt(r['percentile_f1'])} ({fmt(r['percentile_false_alarm_rate'], '.3f')})"]
                     for r in results["main"]])]
    parts += ["## Cost of each chosen model on the main category (torch FP32)\n",
              markdown_table(["model", "parameters", "size MB", "latency ms median / p95", "throughput img/s",
                      "image AUROC normalised (exported)"],
                     [[c["label"], f"{c['parameters']:,}", fmt(c["records"][0]["size_mb"], ".2f"),
                       _latency(c["records"][0]),
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
                                 f"![DBSCAN {space}]({Path(file).relative_to(out)})\n")
    parts += ["## Training analysis: every setting\n",
              markdown_table(["trained on", "model", "setting", "status", "epochs", "best epoch", "best val loss",
                      "val image AUROC", "fit s", "chosen", "over-fitting note"],
                     [[r["scope"], KIND_TITLES[r["kind"]], r["setting"], r["status"] if r["status"] == "ok" else
                       f"failed: {r['error']}", r["epochs"], fmt(r["best_epoch"], "d"), fmt(r["best_val_loss"]),
                       fmt(r["selection_val_image_auroc"]), fmt(r["fit_s"], ".1f"), "yes" if r["chosen"] else "",
                       r["overfitting"]] for r in results["runs"]])]
    parts.append("## Figures\n")
    parts += [f"### {caption}\n\n![{caption}]({Path(path).relative_to(out)})\n" for caption, path in figures.items()]
    return parts


def write_report(results: Mapping[str, Any], figures: Mapping[str, Path], out: Path) -> list[Path]:
    """Write ``report.md`` and ``report.html`` (figures inline) into ``out``."""
    text = "\n".join(_sections(results, figures, out))
    markdown, html = out / "report.md", out / "report.html"
    markdown.write_text(text)
    html.write_text(markdown_to_html(text, out, title=f"Distillation study: {results['main_category']}"))
    return [markdown, html]
