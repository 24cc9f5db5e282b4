"""Markdown tables for ``benchmarks/performance.py``'s result dictionary."""

from __future__ import annotations

from typing import Any

OURS = "SimpleNet (ours) torch FP32"
TARGETS = (  # (row, minimum ratio ours/row of images/s, what the issue asks)
    ("bare backbone", 0.7, "≥ 70 % of the bare backbone"),
    ("anomalib Glass", 2.0, "≥ 2× Glass"),
    ("anomalib Supersimplenet", 2.5, "≥ 2.5× Supersimplenet"),
)
CACHE_TARGET = 10.0


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"  # noqa: PLR0124 (NaN check)


def _ratio(ours: float | None, other: float | None) -> float | None:
    return None if not ours or not other else ours / other


def inference_table(rows: dict[str, Any], batch: int) -> list[str]:
    ours = rows.get(OURS, {}).get("inference", {}).get("images_per_s")
    lines = [
        (
            f"| model | images/s (batch {batch}) | ours torch ÷ model | batch-1 latency median (ms) | p95 (ms) "
            "| peak memory per batch (MB) |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:120]} | | | | |")
            continue
        values = row.get("inference")
        if not values:
            continue
        lines.append(
            f"| {name} | {_num(values['images_per_s'])} | {_num(_ratio(ours, values['images_per_s']))} | "
            f"{_num(values['latency_ms_median'], 0)} | {_num(values['latency_ms_p95'], 0)} | "
            f"{_num(values['peak_mb_per_batch'], 0)} |"
        )
    return lines


def training_table(rows: dict[str, Any]) -> list[str]:
    ours = rows.get(OURS, {})
    ours_epoch = ours.get("train", {}).get("epoch_s_median")
    lines = [
        (
            "| model | epochs | s/epoch (median) | speed ours cached ÷ model | peak memory per training step (MB) "
            "| RSS after each epoch (MB) | image AUROC | pixel AUROC |"
        ),
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]

    def add(name: str, train: dict[str, Any] | None, image: float | None, pixel: float | None, note: str = "") -> None:
        if train is None:
            lines.append(f"| {name} | | | | | | {_num(image, 3)} | {_num(pixel, 3)} |")
            return
        epoch = train["epoch_s_median"]
        rss = " → ".join(f"{value:.0f}" for value in train["rss_end_mb"])
        lines.append(
            f"| {name}{note} | {len(train['epoch_s'])} | {_num(epoch, 1)} | {_num(_ratio(epoch, ours_epoch))} | "
            f"{_num(train['step_peak_mb'], 0)} (+{_num(train['step_extra_mb'], 0)}) | {rss} | "
            f"{_num(image, 3)} | {_num(pixel, 3)} |"
        )

    for name, row in rows.items():
        if "error" in row or row.get("kind") == "limit":
            continue
        if name == OURS:
            fill = row["train"]["epoch_s"][0]
            add(f"{name}, feature cache", row["train"], row["image_AUROC"], row["pixel_AUROC"],
                f" (epoch 1 fills it: {fill:.1f} s)")
            add(f"{name}, no cache", row["train_uncached"], row["train_uncached_AUROC"]["image"],
                row["train_uncached_AUROC"]["pixel"])
        else:
            add(name, row.get("train"), row.get("image_AUROC"), row.get("pixel_AUROC"))
    return lines


def targets(rows: dict[str, Any]) -> list[str]:
    ours = rows.get(OURS, {}).get("inference", {}).get("images_per_s")
    lines = []
    for prefix, minimum, text in TARGETS:
        speeds = [r["inference"]["images_per_s"] for n, r in rows.items() if n.startswith(prefix) and "inference" in r]
        if not speeds or not ours:
            lines.append(f"- {text}: not measured")
            continue
        ratio = ours / max(speeds)  # against the fastest variant measured (e.g. channels_last backbone)
        lines.append(f"- {text}: {ratio:.2f} → {'met' if ratio >= minimum else 'missed'}")
    row = rows.get(OURS, {})
    if "cache_speedup_vs_uncached_run" in row:
        speedup = row["cache_speedup_vs_uncached_run"]
        lines.append(
            f"- cached epoch ≥ {CACHE_TARGET:.0f}× faster than uncached: {speedup:.2f}× "
            f"(vs its own filling epoch {row['cache_speedup_vs_fill_epoch']:.2f}×) → "
            f"{'met' if speedup >= CACHE_TARGET else 'missed'}; loss curves cached vs uncached differ by at most "
            f"{row['loss_curve_max_abs_diff']:.2e}; backbone ran on {row['cache_images_computed']} images, "
            f"cache served {row['cache_images_served']}"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """Conditions, the inference table, the training/quality table and the issue's targets."""
    c = result["conditions"]
    conditions = (
        f"Conditions: {c['machine']}; load average {c['load_average_start'][0]:.1f} at start, "
        f"{c['load_average_end'][0]:.1f} at end; backbone {c['backbone']} ({c['weights']}); "
        f"{c['image_size']} px; batch {c['batch']}; {c['epochs']} epochs (Glass, Supersimplenet: "
        f"{c['peer_epochs']}; Patchcore, Padim: 1); {c['train_images']} train, {c['val_images']} validation, "
        f"{c['test_images']} test images of {c['data']}; medians of {c['throughput_runs']} batch runs and "
        f"{c['latency_runs']} batch-1 runs, interleaved; Padim n_features={c['padim_features']}; "
        f"whole run {c['wall_s'] / 60:.1f} min."
    )
    header = [conditions, ""]
    body = [*inference_table(result["rows"], c["batch"]), "", *training_table(result["rows"]), "",
            "Targets:", *targets(result["rows"]), ""]
    return "\n".join(header + body)
