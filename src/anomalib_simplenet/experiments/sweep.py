"""Run one model's config variants through anomalib's CLI (in process) and compare them: each variant is overlaid on
the ``--config`` files, unknown options (``--model.*``, ``--data.*``, ``--trainer.*`` …) go to every run, each run
fits and tests the checkpoint of lowest monitored loss in ``<out>/<setting>/v<N>``; ``<out>`` gets ``summary.md``,
``summary.csv``, ``metrics.png`` and ``loss_curves.png``. Usage: ``docs/measuring.md``."""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.cli import AnomalibCLI
from jsonargparse import Namespace
from lightning.pytorch import seed_everything

from anomalib_simplenet.lab.figures import loss_figure, metric_figure
from anomalib_simplenet.lab.fit import FitResult, LossHistory, guarded
from anomalib_simplenet.lab.report import markdown_table, write_table_files
from anomalib_simplenet.lab.scores import raw_metrics
from anomalib_simplenet.lab.settings import Setting, make_settings

# Test metrics shown first when present (``_raw``: on the model's own scores, the others on anomalib's normalised
# ones); any other follows in alphabetical order.
PREFERRED_METRICS = ("image_AUROC_raw", "image_AUROC", "pixel_AUROC_raw", "pixel_AUROC", "image_F1Score",
                     "pixel_F1Score")


def next_version_dir(root: Path) -> Path:
    """``root/v<N>`` with N one more than the highest existing version (v0 first); created."""
    versions = [int(p.name[1:]) for p in root.glob("v*") if p.is_dir() and p.name[1:].isdigit()]
    path = root / f"v{max(versions, default=-1) + 1}"
    path.mkdir(parents=True)
    return path


class SweepCLI(AnomalibCLI):
    """``AnomalibCLI`` that writes loggers into ``run_dir``, adds a LossHistory and applies ``seed_everything`` (which
    anomalib 2.7's CLI parses but never applies), so settings differ only in their hyper-parameters."""

    def __init__(self, args: Sequence[str], run_dir: Path) -> None:
        self.run_dir = run_dir
        super().__init__(args, run=False)

    def before_instantiate_classes(self) -> None:
        """Edit the parsed config before anything is built."""
        super().before_instantiate_classes()
        config = self.config[self.subcommand]
        seed = config.get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool):
            seed_everything(seed, workers=True)
        trainer = config.trainer
        for logger in trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]:
            init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
            if init_args is not None and "save_dir" in init_args:
                init_args.save_dir = str(self.run_dir / "logs")
        history = Namespace(class_path=f"{LossHistory.__module__}.{LossHistory.__qualname__}", init_args=Namespace())
        trainer.callbacks = [*(trainer.callbacks or []), history]


def _parse(args: list[str], run_dir: Path) -> SweepCLI:
    """Build the run; a config error (jsonargparse exits) becomes a ValueError with its message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return SweepCLI(args, run_dir)
    except SystemExit as error:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        raise ValueError(lines[-1] if lines else f"configuration error (exit status {error.code})") from None
    finally:
        sys.stderr.write(stderr.getvalue())


def run_setting(
    setting: Setting, out: Path, data: str | None = None, max_epochs: int | None = None, extra: Sequence[str] = ()
) -> FitResult:
    """Fit and test one setting in ``out/<setting>/v<N>``; never raises for a failed run (see ``status``)."""
    result = FitResult(setting.name, next_version_dir(out / setting.name))
    args = ["train", *(a for config in setting.configs for a in ("--config", str(config))),
            "--default_root_dir", str(result.run_dir), *(["--data", data] if data is not None else []),
            *(["--trainer.max_epochs", str(max_epochs)] if max_epochs is not None else []), *extra]  # user's last
    history: LossHistory | None = None
    with guarded(result, f"[sweep] {setting.name}"):
        cli = _parse(args, result.run_dir)
        model, datamodule = cli.model, cli.datamodule
        cli.engine.fit(model, datamodule=datamodule)
        trainer = cli.engine.trainer
        history = next(c for c in trainer.callbacks if isinstance(c, LossHistory))
        checkpoint = trainer.checkpoint_callback
        result.checkpoint = checkpoint.best_model_path if checkpoint is not None and checkpoint.monitor else ""
        # As ``Engine.train`` does (the trainer already exists), but on the best checkpoint when there is one.
        metrics = trainer.test(model, datamodule=datamodule, ckpt_path=result.checkpoint or None, verbose=False)
        result.metrics = {k: float(v) for k, v in (metrics[0] if metrics else {}).items()}
        raw = raw_metrics(model, datamodule.test_dataloader())  # the tested weights: trainer.test loaded them
        result.metrics.update({"image_AUROC_raw": raw["image_auroc"], "pixel_AUROC_raw": raw["pixel_auroc"]})
    if history is not None and history.epochs:
        history.save_csv(result.run_dir / "history.csv")
        result.history = history.rows()
        loss_figure({setting.name: result.history}, title=setting.name).savefig(result.run_dir / "loss_curve.png",
                                                                                dpi=100)
    record = {**_row(result), "checkpoint": result.checkpoint, "configs": [str(c) for c in setting.configs]}
    (result.run_dir / "result.json").write_text(json.dumps(
        record, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)) + "\n")
    gc.collect()
    return result


def _row(result: FitResult, metrics: Sequence[str] = ()) -> dict[str, Any]:
    """One flat row of a run: test metrics, losses of the last epoch, the best validation loss, time."""
    last = {k: next((r[k] for r in reversed(result.history) if math.isfinite(r[k])), math.nan)
            for k in ("train_loss", "val_loss")}
    return {"setting": result.name, "status": result.status,
            **{name: result.metrics.get(name, math.nan) for name in metrics or result.metrics},
            **last, "best_val_loss": result.best_val_loss, "epochs": len(result.history), "time_s": result.fit_s,
            "run_dir": str(result.run_dir), "error": result.error}


def write_report(results: Sequence[FitResult], out: Path, metrics: Sequence[str], title: str) -> str:
    """Write ``summary.md``, ``summary.csv``, ``metrics.png`` and ``loss_curves.png`` to ``out``; return the table."""
    names = {name for result in results for name in result.metrics}
    rows = [_row(r, [m for m in PREFERRED_METRICS if m in names] + sorted(names - set(PREFERRED_METRICS)))
            for r in results]
    header = [c for c in rows[0] if c != "run_dir"] if rows else ["setting"]
    table = markdown_table(header, [[row[c] for c in header] for row in rows])
    write_table_files(out, f"# {title}\n\n{table}", rows, stem="summary", data_stem="summary")
    metric_figure(results, metrics, title=title).savefig(out / "metrics.png", dpi=100)
    loss_figure({r.name: r.history for r in results if r.history}, title=title).savefig(out / "loss_curves.png",
                                                                                      dpi=100)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 when every run succeeded)."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_simplenet.experiments.sweep", allow_abbrev=False,  # else --data.x is taken for --data
        description="Fit and test one model's config variants; write a comparison table and plots. Options not "
        "listed here (--model.*, --data.*, --trainer.* …) are passed to every run's anomalib CLI.")
    for flags, keywords in (
        (("--config",), {"type": Path, "action": "append", "required": True,
                         "help": "base config file(s) of the model (repeat for overlays applied to every setting)"}),
        (("--variants",), {"type": Path, "nargs": "+", "default": [], "help": "one config overlay per setting"}),
        (("--data",), {"help": "data config file or class (anomalib's --data); default: the config's"}),
        (("--out",), {"type": Path, "required": True, "help": "output folder of the sweep"}),
        (("--max-epochs",), {"type": int, "help": "override trainer.max_epochs of every run"}),
        (("--metric",), {"action": "append", "help": "test metric(s) to plot (default image_AUROC, pixel_AUROC)"}),
        (("--title",), {"help": "title of the table and plots (default: the first --config file's name)"}),
    ):
        parser.add_argument(*flags, **keywords)
    args, extra = parser.parse_known_args(argv)
    if extra and not extra[0].startswith("--"):
        parser.error(f"unexpected argument {extra[0]!r} (options passed to anomalib start with --)")
    try:
        settings = make_settings(args.config, args.variants)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, setting in enumerate(settings, 1):
        print(f"[sweep] {index}/{len(settings)}: {setting.name} ({', '.join(map(str, setting.configs))})", flush=True)
        results.append(run_setting(setting, args.out, args.data, args.max_epochs, extra))
    table = write_report(results, args.out, args.metric or ["image_AUROC", "pixel_AUROC"],
                         args.title or f"sweep of {args.config[0].stem}")
    print(f"\n{table}\n[sweep] tables and plots in {args.out}", flush=True)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
