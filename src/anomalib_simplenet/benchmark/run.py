"""One benchmark run: data → (train or load) model → export every variant → measure each → report files."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_simplenet.lab import data as lab_data
from anomalib_simplenet.lab.export import measure_variants, select_variants, variants_table
from anomalib_simplenet.lab.figures import plot_report
from anomalib_simplenet.lab.peers import resolve_model_class
from anomalib_simplenet.lab.report import markdown_table, metric_cells, metric_header, write_table_files
from anomalib_simplenet.lab.scores import raw_metrics
from anomalib_simplenet.lab.weights import weights_description


@dataclass
class BenchmarkConfig:
    """Everything a run needs. ``model`` is a class name of this plugin or of ``anomalib.models``."""

    model: str
    data_root: Path
    category: str
    output: Path
    model_args: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    epochs: int = 1
    max_train: int | None = None
    max_test: int | None = None
    batch_size: int = 8
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    ov_precision: str = "f32"
    warmup: int = 3
    throughput_seconds: float = 5.0
    with_acq: bool = False
    max_drop: float = 0.01
    input_size: tuple[int, int] | None = None
    val_split_ratio: float = 0.5
    seed: int = 0


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _environment() -> dict[str, str]:
    import anomalib
    import nncf
    import openvino

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
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
    if config.checkpoint is not None:
        model = model_class.load_from_checkpoint(config.checkpoint)
    else:
        model = model_class(**config.model_args)
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
    records = measure_variants(
        model, select_variants(config.with_acq), run_dir / "exports", datamodule, config.threads,
        config.throughput_seconds, config.warmup, config.batch_size, config.ov_precision, config.input_size,
        config.max_drop,
    )
    scores = {r["variant"]: scores for r in records if (scores := r.pop("scores")) is not None}

    _step("writing the report")
    context = {
        "model": config.model,
        "model hyper-parameters": dict(model.hparams),
        "input size": input_size,
        "weights": weights_description(model),
        "data": f"{root / config.category}: {len(datamodule.train_data)} train, {len(datamodule.val_data)} val "
        f"(from test folder), {len(datamodule.test_data)} test images",
        "epochs": "from checkpoint " + str(config.checkpoint) if config.checkpoint else config.epochs,
        "Engine.test (torch)": {key: round(float(value), 4) for key, value in engine_test.items()},
        "torch model, raw scores (before anomalib's normalisation)": {k: round(v, 4) for k, v in raw.items()},
        "threads": config.threads,
        "OpenVINO CPU inference precision": config.ov_precision,
        **_environment(),
        "latency": f"batch 1 on each raw test image after {config.warmup} warm-up calls",
        "throughput": f"batch {config.batch_size} of test images resized to {input_size}, ≥{config.throughput_seconds} s",
        "config": {key: str(value) for key, value in asdict(config).items()},
        "wall time s": round(time.time() - started, 1),
    }
    notes = "\n".join(f"- {key}: {value}" for key, value in context.items())
    raw_table = _raw_table(raw)
    text = f"# Deployment benchmark\n\n{notes}\n\n{raw_table}\n{variants_table(records)}"
    paths = write_table_files(run_dir, text, records, {"context": context, "results": records, "scores": scores})
    plot_report(records, run_dir / "report.png", f"{config.model} on {config.category}")
    print(f"weights: {context['weights']}", flush=True)
    print(raw_table + "\n" + variants_table(records), flush=True)
    _step(f"report written: {', '.join(str(p) for p in paths.values())}, {run_dir / 'report.png'}")
    return records


def _raw_table(raw: dict[str, float]) -> str:
    """The torch model's accuracy on raw scores next to the normalised ones (the variants' table is normalised)."""
    record = dict(raw)
    return ("Torch model on the test split, raw scores (before anomalib's normalisation) next to normalised:\n\n"
            + markdown_table(["model", *metric_header([record])], [["torch FP32", *metric_cells(record, [record])]]))
