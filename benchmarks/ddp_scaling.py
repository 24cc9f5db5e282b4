"""Training in 1 and 2 processes (Lightning DDP, CPU, gloo): seconds per epoch, peak memory per process and the test
metrics of each, at the same global batch; prints a Markdown table and writes ``ddp_scaling_seed<seed>.json``.
Usage and how to read the figures: ``docs/measuring.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

import anomalib_simplenet
from anomalib_simplenet.lab.data import datamodule, subset
from anomalib_simplenet.lab.fit import fit
from anomalib_simplenet.lab.report import fmt, markdown_table
from anomalib_simplenet.lab.scores import raw_metrics

MODELS = {
    "SimpleNet": {"backbone": "efficientnet_lite0", "layers": ["blocks.2", "blocks.4"], "pre_trained": True},
    "DistillClassifier": {"mode": "scratch", "pre_trained": False},
    "UNetAE": {},
}


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--train", type=int, default=120, help="evenly spaced train/good images")
    parser.add_argument("--test-good", type=int, default=30)
    parser.add_argument("--test-defects", type=int, default=6, help="images per defect type")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="global training batch (per process: batch / procs)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seed", type=int, default=0, help="seed_everything (another seed: the run-to-run spread)")
    parser.add_argument("--out", type=Path, default=Path("results/ddp_scaling"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # model name: run one fit/test (re-launched by DDP)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One fit + test of ``args.worker`` on ``args.devices`` CPU processes (:func:`~anomalib_simplenet.lab.fit.fit`);
    each rank writes its figures."""
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    model = getattr(anomalib_simplenet, args.worker)(**MODELS[args.worker], image_size=args.image_size)
    data = datamodule(args.root, args.category, batch_size=args.batch // args.devices, eval_batch_size=16)
    run = args.out / f"{args.worker}_{args.devices}_seed{args.seed}"
    result = fit(args.worker, model, data, run, args.epochs, test=True, devices=args.devices,
                 strategy="ddp" if args.devices > 1 else "auto")
    if result.status != "ok":
        raise RuntimeError(result.error)
    rank = model.trainer.global_rank
    weights = getattr(model.model, "feature_extractor", None)
    record = {
        "model": args.worker, "procs": args.devices, "seed": args.seed, "rank": rank,
        "epoch_seconds": [epoch["seconds"] for epoch in result.epochs],
        "fit_seconds": result.fit_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": result.metrics, "raw": raw_metrics(model, data.test_dataloader()),
        "weights": getattr(weights, "weights_source", "random initialisation"),
    }
    (run / f"rank{rank}.json").write_text(json.dumps(record))


def _table(records: list[dict]) -> str:
    rows = []
    for record in records:
        seconds, metrics, raw = record["epoch_seconds"], record["metrics"], record["raw"]
        later = sum(seconds[1:]) / len(seconds[1:]) if len(seconds) > 1 else float("nan")
        accuracy = (raw["image_auroc"], metrics.get("image_AUROC"), raw["pixel_auroc"], metrics.get("pixel_AUROC"))
        rows.append([record["model"], record["procs"], record["seed"], fmt(seconds[0], ".1f"), fmt(later, ".1f"),
                     " / ".join(f"{mb:.0f}" for mb in record["peak_rss_mb"]), *(fmt(v, ".3f") for v in accuracy),
                     fmt(record["fit_seconds"], ".0f")])
    return markdown_table(["model", "processes", "seed", "s/epoch (1st)", "s/epoch (later)",
                           "peak RSS per process (MB)", "image AUROC raw", "image AUROC normalised", "pixel AUROC raw",
                           "pixel AUROC normalised", "fit s"], rows)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.worker:
        worker(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    root = subset(args.data_root, args.category, args.out / "data", args.train, test_good=args.test_good,
                  test_defects=args.test_defects)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    records = []
    for model, procs in itertools.product(args.models, args.procs):
        # The worker gets this command line (its options) plus its model, process count and the subset.
        command = [sys.executable, __file__, *(argv or sys.argv[1:]), "--worker", model, "--devices", str(procs),
                   "--root", str(root), "--out", str(args.out)]
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        run = args.out / f"{model}_{procs}_seed{args.seed}"
        ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in range(procs)]
        records.append({**ranks[0], "peak_rss_mb": [rank["peak_rss_mb"] for rank in ranks],
                        "wall_seconds": time.perf_counter() - start})
        print(f"{model} × {procs}: {records[-1]['wall_seconds']:.0f} s, weights: {records[-1]['weights']}", flush=True)
    table = _table(records)
    print(f"\n{args.category}: {args.train} train images, {args.image_size} px, {args.epochs} epochs, global batch "
          f"{args.batch}, {args.threads} thread(s) per process\n\n{table}")
    (args.out / f"ddp_scaling_seed{args.seed}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
