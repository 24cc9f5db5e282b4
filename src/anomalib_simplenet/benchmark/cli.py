"""Command line: ``python -m anomalib_simplenet.benchmark`` (or ``anomalib-simplenet-benchmark``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from anomalib_simplenet.deploy.precision import PRECISION_CHOICES
from anomalib_simplenet.lab.weights import add_weights_argument, weights_kwargs

from .run import BenchmarkConfig, run_benchmark

EXAMPLE = """example:
  python -m anomalib_simplenet.benchmark --model DistillClassifier \\
      --model-args '{"teacher_backbone": "efficientnet_lite0", "image_size": 256}' --weights packaged \\
      --data-root ../shared/data --category magnetic_tile --epochs 2 --max-train 100 --max-test 120 \\
      --output results/benchmark_simplenet_magnetic_tile
"""


def _model_args(text: str | None) -> dict[str, Any]:
    """``--model-args``: a JSON/YAML mapping, inline or in a file."""
    if not text:
        return {}
    path = Path(text)
    value = yaml.safe_load(path.read_text() if path.is_file() else text)
    if not isinstance(value, dict):
        msg = f"--model-args must be a mapping (inline JSON/YAML or a file), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark command."""
    p = argparse.ArgumentParser(
        prog="python -m anomalib_simplenet.benchmark",
        description="Export a trained model as torch FP32 and OpenVINO FP32/FP16/INT8/INT8_PTQ(/INT8_ACQ), measure "
        "latency, throughput, size and accuracy of each on one test set, write a report.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model class, e.g. SimpleNet, UNetAE, DistillClassifier, Padim")
    p.add_argument("--model-args", type=_model_args, default={}, help="constructor arguments (JSON/YAML or file)")
    add_weights_argument(p)
    p.add_argument("--checkpoint", type=Path, help="Lightning checkpoint to load instead of training")
    p.add_argument("--data-root", type=Path, required=True, help="folder holding the MVTec-layout category")
    p.add_argument("--category", required=True)
    p.add_argument("--output", type=Path, required=True, help="run folder for exports and report files")
    p.add_argument("--epochs", type=int, default=1, help="training epochs when no --checkpoint is given")
    p.add_argument("--max-train", type=int, help="use at most this many training images (deterministic subset)")
    p.add_argument("--max-test", type=int, help="use at most this many test-folder images (split into val and test)")
    p.add_argument("--batch-size", type=int, default=8, help="train/eval batch and throughput batch")
    p.add_argument("--threads", type=int, help="CPU threads for torch and OpenVINO (default: all cores)")
    p.add_argument("--ov-precision", choices=PRECISION_CHOICES, default="f32",
                   help="OpenVINO CPU inference precision (auto: OpenVINO's default, bf16 on bf16-capable CPUs)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before latency timing")
    p.add_argument("--throughput-seconds", type=float, default=5.0)
    p.add_argument("--acq", action="store_true", help="also export and measure INT8_ACQ (accuracy-controlled)")
    p.add_argument("--max-drop", type=float, default=0.01, help="INT8_ACQ: allowed image-AUROC drop (absolute)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="static export size (default dynamic)")
    p.add_argument("--val-split-ratio", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the benchmark; exit code 0 when the torch reference was measured."""
    args = vars(parser().parse_args(argv))
    args["with_acq"] = args.pop("acq")
    # Explicit --model-args win over what --weights implies.
    args["model_args"] = {**weights_kwargs(args["model"], args.pop("weights")), **args["model_args"]}
    if args["input_size"] is not None:
        args["input_size"] = tuple(args["input_size"])
    if args["threads"] is None:
        args.pop("threads")
    records = run_benchmark(BenchmarkConfig(**args))
    print(json.dumps({r["variant"]: r["status"] for r in records}))
    return 0 if records and records[0]["status"] == "ok" else 1
