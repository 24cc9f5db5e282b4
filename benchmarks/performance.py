"""SimpleNet against anomalib's peers, in one run on this machine: speed, memory, training time, AUROC.

Usage, what is measured and how: ``docs/measuring.md``. Writes ``performance.json`` and ``performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from anomalib_simplenet.lab.data import datamodule, subset
from anomalib_simplenet.lab.export import OPENVINO_FP32, OPENVINO_INT8_PTQ, export_variants
from anomalib_simplenet.lab.fit import fit
from anomalib_simplenet.lab.latency import OpenVINORunner, measure_inference, module_runner
from anomalib_simplenet.lab.peers import PEERS, TITLES, build, shared_weights
from anomalib_simplenet.lab.report import fmt, markdown_table, metric_cells, metric_header
from anomalib_simplenet.lab.scores import pipeline_metrics, raw_metrics
from anomalib_simplenet.lab.weights import DEFAULT_BACKBONE, add_weights_argument, parse_weights

REPO = Path(__file__).resolve().parents[1]
OURS = "SimpleNet (ours) torch FP32"
SIZES = {  # option: (default, value under --tiny, help); each must be >= 1
    "image_size": (224, 128, None), "batch": (8, 2, "training and throughput batch size"),
    "epochs": (2, 2, "epochs of SimpleNet, Glass, Supersimplenet"),
    "peer_epochs": (None, 1, "Glass and Supersimplenet (default: --epochs)"), "train_images": (60, 4, None),
    "test_images": (40, 4, "test images the AUROC is computed on"),
    "val_images": (20, 4, "validation images (also from the test folder)"), "throughput_runs": (5, 1, None),
    "latency_runs": (15, 2, None), "padim_features": (100, 32, "Padim n_features"),
}
TINY = {"backbone": "resnet18", "weights": parse_weights("random"), "threads": 1}
TARGETS = (("bare backbone", 0.7, "≥ 70 % of the bare backbone"), ("anomalib Glass", 2.0, "≥ 2× Glass"),
           ("anomalib Supersimplenet", 2.5, "≥ 2.5× Supersimplenet"))  # (row, minimum images/s ratio ours/row)
CACHE_TARGET = 10.0
SPEED_KEYS = ("latency_ms_median", "latency_ms_p95", "peak_mb_per_batch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; ``--tiny`` replaces the size arguments by a seconds-long configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench_performance")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    add_weights_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    for name, (default, _, help_text) in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=help_text)
    parser.add_argument("--models", nargs="*", default=["glass", "supersimplenet", "patchcore", "padim"],
                        choices=PEERS, help="peers to include")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO export and runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="torch device for the torch models (OpenVINO: CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a smoke test")
    args = parser.parse_args(argv)
    if args.tiny:
        vars(args).update(TINY, **{name: tiny for name, (_, tiny, _) in SIZES.items()})
    args.peer_epochs = args.peer_epochs or args.epochs
    for name in SIZES:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def train_summary(epochs: list[dict[str, float]], first_is_fill: bool = False) -> dict[str, Any]:
    """Epoch seconds (median without the cache-filling first epoch), step memory peaks, RSS after each epoch."""
    seconds = [e["seconds"] for e in epochs]
    later = seconds[1:] if first_is_fill and len(seconds) > 1 else seconds
    return {"epoch_s": seconds, "epoch_s_median": statistics.median(later) if later else float("nan"),
            "step_peak_mb": max((e["step_peak_mb"] for e in epochs), default=0.0),
            "step_extra_mb": max((e["step_extra_mb"] for e in epochs), default=0.0),
            "rss_end_mb": [e["rss_end_mb"] for e in epochs]}


def openvino_rows(model: Any, data: Any, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """OpenVINO FP32 and INT8 (post-training quantisation on the validation images): a runner, export seconds and
    pipeline AUROC each; errors are rows, not raised."""
    rows: dict[str, dict[str, Any]] = {}
    for result in export_variants(model, [OPENVINO_FP32, OPENVINO_INT8_PTQ], args.output / "export", data):
        name = f"SimpleNet (ours) OpenVINO {'FP32' if result.variant == OPENVINO_FP32 else 'INT8'}"
        try:
            if result.error is not None:
                raise RuntimeError(result.error)  # noqa: TRY301 (recorded as this row's error)
            runner = OpenVINORunner(result.path, args.threads, "f32")
        except Exception as error:  # noqa: BLE001 (report and continue)
            rows[name] = {"kind": "ours", "error": f"{type(error).__name__}: {error}"}
            continue
        auroc = pipeline_metrics(runner, data.test_dataloader())
        rows[name] = {"kind": "ours", "export_s": result.seconds, "same_loop_AUROC": auroc, **auroc, "runner": runner}
    return rows


def fit_row(name: str, model: Any, data: Any, args: argparse.Namespace, epochs: int) -> tuple[dict[str, Any], Any]:
    """Fit and test with the epoch timer; the row's accuracy (raw and normalised) and the fit result."""
    result = fit(name, model, data, args.output / "runs" / name, epochs, test=True, seed=args.seed,
                 accelerator=torch.device(args.device).type)  # seeded: Patchcore's coreset draws from numpy
    if result.status != "ok":
        raise RuntimeError(result.error)
    row = {key: result.metrics.get(key, float("nan")) for key in ("image_AUROC", "pixel_AUROC")}
    return {**row, **raw_metrics(model, data.test_dataloader())}, result


def simplenet_rows(weights: Any, data: Any, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """SimpleNet recomputing features every epoch, then from the cache (same seed: same loss curve); our row."""
    fits = {}
    for cache in (False, "memory"):
        torch.manual_seed(args.seed)
        model, _ = build("simplenet", weights, args.image_size, args.epochs, feature_cache=cache)
        fits[cache] = (model, *fit_row("simplenet" if cache else "simplenet_uncached", model, data, args, args.epochs))
    (_, plain, plain_fit), (ours_model, ours, ours_fit) = fits[False], fits["memory"]
    uncached, cached = train_summary(plain_fit.epochs), train_summary(ours_fit.epochs, first_is_fill=True)
    pairs = list(zip(ours_fit.losses, plain_fit.losses, strict=False))
    runner = module_runner(ours_model, args.device)
    return {
        "kind": "ours", **ours, "train": cached, "train_uncached": uncached,
        "train_uncached_AUROC": {"image": plain["image_AUROC"], "pixel": plain["pixel_AUROC"]}, "uncached": plain,
        "cache_speedup_vs_uncached_run": uncached["epoch_s_median"] / cached["epoch_s_median"],
        "cache_speedup_vs_fill_epoch": cached["epoch_s"][0] / cached["epoch_s_median"],
        "loss_curve_max_abs_diff": max((abs(a - b) for a, b in pairs), default=float("nan")),
        "cache_images_computed": ours_model.training_features.computed_images,
        "cache_images_served": ours_model.training_features.served_images,
        "runner": runner, "same_loop_AUROC": pipeline_metrics(runner, data.test_dataloader()),
    }, ours_model


def peer_row(peer: str, weights: Any, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One anomalib peer fitted and tested (memory-bank methods in their one pass); a failure is the row's error."""
    epochs = 1 if peer in {"patchcore", "padim"} else args.peer_epochs
    try:
        torch.manual_seed(args.seed)
        model, _ = build(peer, weights, args.image_size, epochs, n_features=args.padim_features, coreset_ratio=0.1)
        row, result = fit_row(peer, model, data, args, epochs)
    except Exception as error:  # noqa: BLE001 (report and continue)
        return {"kind": "peer", "error": f"{type(error).__name__}: {error}"}
    return {"kind": "peer", **row, "train": train_summary(result.epochs), "epochs_trained": epochs,
            "runner": module_runner(model, args.device)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from anomalib_simplenet.components.backbone import create_feature_extractor, freeze

    wall, load_start = time.perf_counter(), os.getloadavg()
    root = subset(args.data_root, args.category, args.output / "data", args.train_images,
                  args.test_images + args.val_images)
    data = datamodule(root, args.category, batch_size=args.batch, seed=args.seed,
                      val_split_ratio=args.val_images / (args.val_images + args.test_images))
    weights = shared_weights(args.backbone, args.weights, args.seed, args.output)
    rows: dict[str, dict[str, Any]] = {}
    rows[OURS], ours_model = simplenet_rows(weights, data, args)
    if not args.no_openvino:
        rows.update(openvino_rows(ours_model.cpu(), data, args))
        ours_model.to(args.device)
    rows.update({TITLES[peer]: peer_row(peer, weights, data, args) for peer in args.models})
    deepest, pretrained = weights.layers[-1], weights.simplenet_args.get("pre_trained", False)
    for layout in ("NCHW", "channels_last"):
        backbone = freeze(create_feature_extractor(args.backbone, [deepest], pretrained,
                                                   weights.simplenet_args.get("backbone_weights")))
        if layout == "channels_last":
            backbone.to(memory_format=torch.channels_last)
        rows[f"bare backbone to {deepest} ({layout})"] = {"kind": "limit",
                                                          "runner": module_runner(backbone, args.device)}

    # Real test images (resized by the model pipelines; the bare backbones get them normalised as SimpleNet does).
    images = torch.cat([batch.image for batch in data.test_dataloader()])
    batch = images[torch.arange(args.batch) % len(images)].contiguous()
    normalised = ours_model.pre_processor.transform(batch)
    runners = {name: row.pop("runner") for name, row in rows.items() if "runner" in row}
    inputs = {name: normalised if rows[name]["kind"] == "limit" else batch for name in runners}
    wrapped = {name: (lambda x, run=run, name=name: run(inputs[name][: len(x)])) for name, run in runners.items()}
    speed = measure_inference(wrapped, batch, args.throughput_runs, args.latency_runs,
                              cuda=torch.device(args.device).type == "cuda")
    for name, values in speed.items():
        rows[name]["inference"] = values
    conditions = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, device {args.device}",
        "python": platform.python_version(), "torch": torch.__version__, "load_average_start": load_start,
        "load_average_end": os.getloadavg(), "backbone": args.backbone, "weights": weights.source,
        "data": str(args.data_root / args.category), "tiny": args.tiny, **{name: getattr(args, name) for name in SIZES},
        "test_images": len(data.test_data), "val_images": len(data.val_data), "wall_s": time.perf_counter() - wall,
    }
    result = {"conditions": conditions, "rows": rows}
    (args.output / "performance.json").write_text(json.dumps(result, indent=2, default=str))
    table = markdown(result)
    (args.output / "performance.md").write_text(table)
    print(table)
    return result


def markdown(result: dict[str, Any]) -> str:
    """Conditions, the inference table, the training/accuracy table and the targets."""
    c, rows = result["conditions"], result["rows"]
    ours = rows.get(OURS, {})
    ours_speed, ours_epoch = ours.get("inference", {}).get("images_per_s"), ours.get("train", {}).get("epoch_s_median")
    lines = [f"Conditions: {c['machine']}; load average {c['load_average_start'][0]:.1f} at start, "
             f"{c['load_average_end'][0]:.1f} at end; backbone {c['backbone']} ({c['weights']}); {c['image_size']} px; "
             f"batch {c['batch']}; {c['epochs']} epochs (Glass, Supersimplenet: {c['peer_epochs']}; Patchcore, Padim: "
             f"1); {c['train_images']} train, {c['val_images']} validation, {c['test_images']} test images of "
             f"{c['data']}; medians of {c['throughput_runs']} batch runs and {c['latency_runs']} batch-1 runs, "
             f"interleaved; Padim n_features={c['padim_features']}; whole run {c['wall_s'] / 60:.1f} min.", "",
             markdown_table(["model", f"images/s (batch {c['batch']})", "ours torch ÷ model",
                             "batch-1 latency median (ms)", "p95 (ms)", "peak memory per batch (MB)"],
                            [[name, f"failed: {row['error'][:120]}", "", "", "", ""] if "error" in row else
                             [name, fmt(row["inference"]["images_per_s"], ".2f"),
                              fmt(ours_speed / row["inference"]["images_per_s"] if ours_speed else None, ".2f"),
                              *(fmt(row["inference"][key], ".0f") for key in SPEED_KEYS)]
                             for name, row in rows.items()])]
    trained = [row for row in rows.values() if "train" in row]
    train_rows = []
    for name, row in rows.items():
        runs = [(name, row.get("train"), row), (f"{name}, no cache", row.get("train_uncached"), row.get("uncached"))]
        for label, train, scored in (run for run in runs if run[1] is not None):
            train_rows.append([label, len(train["epoch_s"]), fmt(train["epoch_s_median"], ".1f"),
                               fmt(train["epoch_s_median"] / ours_epoch if ours_epoch else None, ".2f"),
                               f"{fmt(train['step_peak_mb'], '.0f')} (+{fmt(train['step_extra_mb'], '.0f')})",
                               " → ".join(f"{value:.0f}" for value in train["rss_end_mb"]),
                               *metric_cells(scored, trained)])
    header = ["model", "epochs", "s/epoch (median)", "s/epoch ÷ ours cached", "peak memory per training step (MB)",
              "RSS after each epoch (MB)", *metric_header(trained)]
    lines += ["", markdown_table(header, train_rows), "Targets:"]
    for prefix, minimum, text in TARGETS:
        speeds = [r["inference"]["images_per_s"] for n, r in rows.items() if n.startswith(prefix) and "inference" in r]
        ratio = ours_speed / max(speeds) if speeds and ours_speed else None  # against the fastest variant measured
        lines.append(f"- {text}: " + ("not measured" if ratio is None else
                                      f"{ratio:.2f} → {'met' if ratio >= minimum else 'missed'}"))
    if "cache_speedup_vs_uncached_run" in ours:
        speedup, met = ours["cache_speedup_vs_uncached_run"], ours["cache_speedup_vs_uncached_run"] >= CACHE_TARGET
        lines.append(f"- cached epoch ≥ {CACHE_TARGET:.0f}× faster than uncached: {speedup:.2f}× (vs its own filling "
                     f"epoch {ours['cache_speedup_vs_fill_epoch']:.2f}×) → {'met' if met else 'missed'}; loss curves "
                     f"cached vs uncached differ by at most {ours['loss_curve_max_abs_diff']:.2e}; backbone ran on "
                     f"{ours['cache_images_computed']} images, cache served {ours['cache_images_served']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
