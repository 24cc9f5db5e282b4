"""One benchmark run: data → (train or load) model → export every variant → measure each → report files.

The command line (``python -m anomalib_simplenet.benchmark``, ``anomalib-simplenet-benchmark``) has one option per
field of :class:`BenchmarkConfig`, plus ``--weights``. Usage: ``docs/measuring.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_simplenet.deploy.precision import PRECISION_CHOICES
from anomalib_simplenet.lab import data as lab_data
from anomalib_simplenet.lab.export import measure_variants, select_variants, variants_table
from anomalib_simplenet.lab.figures import plot_report
from anomalib_simplenet.lab.peers import resolve_model_class
from anomalib_simplenet.lab.report import markdown_table, metric_cells, metric_header, write_table_files
from anomalib_simplenet.lab.scores import raw_metrics
from anomalib_simplenet.lab.weights import add_weights_argument, weights_description, weights_kwargs


def _model_args(text: str) -> dict[str, Any]:
    """``--model-args``: a JSON/YAML mapping, inline or in a file."""
    path = Path(text)
    value = yaml.safe_load(path.read_text() if path.is_file() else text) if text else {}
    if not isinstance(value, dict):
        msg = f"--model-args must be a mapping (inline JSON/YAML or a file), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def option(default: Any = MISSING, **argparse_kwargs: Any) -> Any:
    """A configuration field that is also a command-line option (``argparse_kwargs`` go to ``add_argument``; a
    callable ``default`` is a factory)."""
    if callable(default):
        return field(default_factory=default, metadata=argparse_kwargs)
    return field(default=default, metadata=argparse_kwargs)


@dataclass
class BenchmarkConfig:
    """Everything a run needs. ``model`` is a class name of this plugin or of ``anomalib.models``."""

    model: str = option(help="model class, e.g. SimpleNet, UNetAE, DistillClassifier, Padim")
    data_root: Path = option(type=Path, help="folder holding the MVTec-layout category")
    category: str = option()
    output: Path = option(type=Path, help="run folder for exports and report files")
    model_args: dict[str, Any] = option(dict, type=_model_args, help="constructor arguments (JSON/YAML or file)")
    checkpoint: Path | None = option(None, type=Path, help="Lightning checkpoint to load instead of training")
    epochs: int = option(1, type=int, help="training epochs when no --checkpoint is given")
    max_train: int | None = option(None, type=int, help="at most this many training images (deterministic subset)")
    max_test: int | None = option(None, type=int, help="at most this many test-folder images (split: val and test)")
    batch_size: int = option(8, type=int, help="train/eval batch and throughput batch")
    threads: int = option(lambda: os.cpu_count() or 1, type=int, help="CPU threads for torch and OpenVINO")
    ov_precision: str = option("f32", choices=PRECISION_CHOICES, help="OpenVINO CPU inference precision (auto: "
                               "OpenVINO's default, bf16 on bf16-capable CPUs)")
    warmup: int = option(3, type=int, help="untimed calls before latency timing")
    throughput_seconds: float = option(5.0, type=float)
    with_acq: bool = option(False, flag="--acq", action="store_true", help="also measure INT8_ACQ (accuracy control)")
    max_drop: float = option(0.01, type=float, help="INT8_ACQ: allowed image-AUROC drop (absolute)")
    input_size: tuple[int, int] | None = option(None, type=int, nargs=2, metavar=("H", "W"),
                                                help="static export size (default dynamic)")
    val_split_ratio: float = option(0.5, type=float)
    seed: int = option(0, type=int)


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _environment() -> dict[str, str]:
    import anomalib
    import nncf
    import openvino

    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    versions = f"torch {torch.__version__}, openvino {openvino.__version__}, nncf {nncf.__version__}, "
    return {"cpu": f"{cpu} ({os.cpu_count()} cores)", "versions": versions + f"anomalib {anomalib.__version__}"}


def run_benchmark(config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Run the whole benchmark and write its files into ``config.output``; returns the table records."""
    started = time.time()
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed, workers=True)
    torch.set_num_threads(config.threads)

    root = Path(config.data_root)
    if config.max_train is not None or config.max_test is not None:
        _step(f"subset of {root / config.category}: ≤{config.max_train} train, ≤{config.max_test} test images")
        root = lab_data.subset(root, config.category, run_dir / "data", config.max_train, config.max_test)
    model_class = resolve_model_class(config.model)
    model = (model_class(**config.model_args) if config.checkpoint is None
             else model_class.load_from_checkpoint(config.checkpoint))
    input_size = tuple(int(s) for s in model.input_size)
    datamodule = lab_data.datamodule(root, config.category, input_size, config.batch_size, config.seed,
                                     config.val_split_ratio)
    engine = Engine(max_epochs=config.epochs, default_root_dir=run_dir / "train", logger=False, accelerator="cpu")
    if config.checkpoint is None:
        _step(f"training {config.model} for {config.epochs} epoch(s)")
        engine.fit(model, datamodule=datamodule)
    _step("Engine.test of the torch model (normalised scores) and its raw scores")
    engine_test = engine.test(model, datamodule=datamodule, verbose=False)[0]
    raw = raw_metrics(model, datamodule.test_dataloader())

    _step("exporting and measuring every variant")
    records = measure_variants(model, select_variants(config.with_acq), run_dir / "exports", datamodule,
                               config.threads, config.throughput_seconds, config.warmup, config.batch_size,
                               config.ov_precision, config.input_size, config.max_drop)
    scores = {r["variant"]: scores for r in records if (scores := r.pop("scores")) is not None}

    _step("writing the report")
    context = {
        "model": config.model, "model hyper-parameters": dict(model.hparams), "input size": input_size,
        "weights": weights_description(model),
        "data": f"{root / config.category}: {len(datamodule.train_data)} train, {len(datamodule.val_data)} val "
        f"(from test folder), {len(datamodule.test_data)} test images",
        "epochs": "from checkpoint " + str(config.checkpoint) if config.checkpoint else config.epochs,
        "Engine.test (torch)": {key: round(float(value), 4) for key, value in engine_test.items()},
        "torch model, raw scores (before anomalib's normalisation)": {k: round(v, 4) for k, v in raw.items()},
        "threads": config.threads, "OpenVINO CPU inference precision": config.ov_precision, **_environment(),
        "latency": f"batch 1 on each raw test image after {config.warmup} warm-up calls",
        "throughput": f"batch {config.batch_size} of test images resized to {input_size}, ≥{config.throughput_seconds} s",
        "config": {key: str(value) for key, value in asdict(config).items()},
        "wall time s": round(time.time() - started, 1),
    }
    notes = "\n".join(f"- {key}: {value}" for key, value in context.items())
    # The torch model's accuracy on raw scores next to the normalised ones (the variants' table is normalised).
    raw_table = ("Torch model on the test split, raw scores (before anomalib's normalisation) next to normalised:\n\n"
                 + markdown_table(["model", *metric_header([raw])], [["torch FP32", *metric_cells(raw, [raw])]]))
    tables = f"{raw_table}\n{variants_table(records)}"
    paths = write_table_files(run_dir, f"# Deployment benchmark\n\n{notes}\n\n{tables}", records,
                              {"context": context, "results": records, "scores": scores})
    plot_report(records, run_dir / "report.png", f"{config.model} on {config.category}")
    print(f"weights: {context['weights']}\n{tables}", flush=True)
    _step(f"report written: {', '.join(str(p) for p in paths.values())}, {run_dir / 'report.png'}")
    return records


def parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark command: one option per configuration field, and ``--weights``."""
    p = argparse.ArgumentParser(prog="python -m anomalib_simplenet.benchmark", description=(
        "Export a trained model as torch FP32 and OpenVINO FP32/FP16/INT8/INT8_PTQ(/INT8_ACQ), measure latency, "
        "throughput, size and accuracy of each on one test set, write a report."))
    for option in fields(BenchmarkConfig):
        kwargs = dict(option.metadata)
        flag = kwargs.pop("flag", f"--{option.name.replace('_', '-')}")
        if option.default is MISSING and option.default_factory is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = option.default if option.default is not MISSING else option.default_factory()
        p.add_argument(flag, dest=option.name, **kwargs)
    add_weights_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the benchmark; exit code 0 when the torch reference was measured."""
    args = vars(parser().parse_args(argv))
    # Explicit --model-args win over what --weights implies.
    args["model_args"] = {**weights_kwargs(args["model"], args.pop("weights")), **args["model_args"]}
    if args["input_size"] is not None:
        args["input_size"] = tuple(args["input_size"])
    records = run_benchmark(BenchmarkConfig(**args))
    print(json.dumps({r["variant"]: r["status"] for r in records}))
    return 0 if records and records[0]["status"] == "ok" else 1
