"""Input pipeline: decode + augment throughput of the training DataLoader on real JPEGs, and an
end-to-end epoch (JPEG files -> loader -> MCCL train step) against the synthetic-tensor step.

The images are real photographs: scikit-learn's ``china.jpg`` and ``flower.jpg`` (427x640),
replicated into a temporary folder (``--images DIR`` uses a folder of your JPEGs instead, e.g.
a copy of MSRC). Labels are random; they cost nothing to load.

1. ``loader``: images/s of the project's train transform (PIL decode, RandomResizedCrop, flip,
   RandAugment, normalise) through ``DataLoader`` for each ``--workers`` count; on CUDA also the
   ``train.decode_device: cuda`` path (workers read bytes, nvJPEG decodes the batch, the same
   transform runs on the GPU tensors).
2. ``epoch``: the MCCL train step (forward, loss, backward, AdamW, prototype update) fed by the
   loader, against the same step on one batch already on the device; interleaved repeats, median
   images/s and the ratio (target on a GPU: end-to-end within 10 % of synthetic).

    python bench/input_pipeline.py                                   # CPU smoke settings
    python bench/input_pipeline.py --image-size 224 --batch-size 128 --workers 4,8,16 \\
        --arch resnet101 --precision bf16 --channels-last --results-name <card>-<date>   # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from train_throughput import synthetic_cooccurrence  # bench/ is the script's folder, first on sys.path

from mccl_core.data.dataset import ImageRecord, IntentDataset
from mccl_core.data.gpu_decode import EncodedImages, GpuBatchDecoder, collate_encoded
from mccl_core.data.transforms import build_transforms
from mccl_core.models import ARCHS, ModelConfig, build_model
from mccl_core.training.loop import adamw_kernel

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 28


def replicate_sample_jpegs(folder: Path, count: int) -> list[Path]:
    """``count`` JPEG files in ``folder``: scikit-learn's two sample photographs, alternately,
    each copy mirrored or not and re-encoded at quality 85..95 (distinct files, equal cost)."""
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = photos[i % 2] if (i // 2) % 2 == 0 else photos[i % 2][:, ::-1]
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, quality=85 + i % 11)
        paths.append(path)
    return paths


def jpeg_dataset(paths: list[Path], transform: Callable, seed: int = 0) -> IntentDataset:
    rng = np.random.default_rng(seed)
    records = [
        ImageRecord(f"img{i}", path, tuple(sorted({int(rng.integers(NUM_CLASSES)), int(rng.integers(NUM_CLASSES))})))
        for i, path in enumerate(paths)
    ]
    return IntentDataset(records, [f"class_{c}" for c in range(NUM_CLASSES)], transform=transform, name="bench")


def _loader(dataset: IntentDataset, batch_size: int, workers: int, gpu_decode: bool, pin: bool) -> DataLoader:
    # As mccl_core.training.loop._train_loader builds it (shuffled, drop_last).
    if gpu_decode:
        return DataLoader(
            EncodedImages(dataset),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            collate_fn=collate_encoded,
        )
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, pin_memory=pin)


def _cycle(loader: DataLoader) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


def measure_loader(
    dataset: IntentDataset,
    batch_size: int,
    workers: int,
    batches: int,
    device: torch.device,
    decoder: GpuBatchDecoder | None,
) -> dict[str, float]:
    """Images/s of ``batches`` batches (after the first, which pays the worker start-up)."""
    loader = _loader(dataset, batch_size, workers, decoder is not None, device.type == "cuda")
    it = _cycle(loader)
    start = time.perf_counter()

    def take() -> None:
        batch = next(it)
        if decoder is not None:
            decoder(batch["jpeg"])
        else:
            batch["image"].to(device, non_blocking=True)

    take()
    first = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        take()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images_per_s": batches * batch_size / seconds, "first_batch_s": first}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = ARCHS[args.arch]
    transform = build_transforms(args.image_size, train=True, mean=spec.default_mean, std=spec.default_std)
    with contextlib.ExitStack() as stack:
        if args.images:
            paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
            if not paths:
                raise SystemExit(f"no .jpg files under {args.images}")
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mccl-bench-jpegs-")))
            paths = replicate_sample_jpegs(folder, args.num_images)
        dataset = jpeg_dataset(paths, transform)
        decoder = GpuBatchDecoder(transform, device) if device.type == "cuda" else None

        loader_rates: dict[str, dict[str, float]] = {}
        for workers in args.workers:
            loader_rates[f"cpu_workers_{workers}"] = measure_loader(
                dataset, args.batch_size, workers, args.loader_batches, device, None
            )
            print(f"loader  cpu decode, {workers:2d} workers: {loader_rates[f'cpu_workers_{workers}']}", flush=True)
        if decoder is not None:
            for workers in args.workers:
                key = f"gpu_decode_workers_{workers}"
                loader_rates[key] = measure_loader(
                    dataset, args.batch_size, workers, args.loader_batches, device, decoder
                )
                print(f"loader  gpu decode, {workers:2d} workers: {loader_rates[key]}", flush=True)

        epoch = measure_epoch(args, dataset, device, decoder)
    return {
        "benchmark": "input_pipeline",
        "settings": {k: v for k, v in vars(args).items() if k != "images"} | {"images": str(args.images or "sklearn")},
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "num_images": len(dataset),
        "loader": loader_rates,
        "epoch": epoch,
    }


def measure_epoch(
    args: argparse.Namespace, dataset: IntentDataset, device: torch.device, decoder: GpuBatchDecoder | None
) -> dict[str, Any]:
    """MCCL train step fed by the loader vs. on a resident synthetic batch, interleaved repeats."""
    stages = list(ARCHS[args.arch].stage_names[-2:])
    cfg = ModelConfig.from_dict(
        {
            "backbone": {"arch": args.arch, "stages": stages, "weights": "none"},
            "use_cpi": False,
            "mcc": {"residual": 0.5},
        }
    )
    counts = synthetic_cooccurrence(NUM_CLASSES, 0)
    embeddings = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 384), dim=1).numpy()
    model = build_model(cfg, NUM_CLASSES, embeddings, counts, None)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2, **adamw_kernel(device))
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if args.precision == "bf16"
        else contextlib.nullcontext
    )

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.contiguous(memory_format=memory_format)
        with autocast():
            output = model(images)
        loss = model.loss(output, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_prototypes(output, labels)

    workers = args.epoch_workers if args.epoch_workers is not None else max(args.workers)
    sources = {"cpu_decode": _cycle(_loader(dataset, args.batch_size, workers, False, device.type == "cuda"))}
    if decoder is not None:
        sources["gpu_decode"] = _cycle(_loader(dataset, args.batch_size, workers, True, False))
    first = next(sources["cpu_decode"])
    synthetic_images, synthetic_labels = first["image"].to(device), first["labels"].to(device)

    def synthetic() -> None:
        step(synthetic_images, synthetic_labels)

    def from_loader(name: str) -> Callable[[], None]:
        def run_step() -> None:
            batch = next(sources[name])
            if name == "gpu_decode":
                assert decoder is not None
                images = decoder(batch["jpeg"])
            else:
                images = batch["image"].to(device, non_blocking=True)
            step(images, batch["labels"].to(device, non_blocking=True))

        return run_step

    runs: dict[str, Callable[[], None]] = {"synthetic": synthetic}
    runs.update({name: from_loader(name) for name in sources})
    for fn in runs.values():  # warm-up (worker start-up, cudnn autotuning)
        fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    report = {
        "arch": args.arch,
        "workers": workers,
        "images_per_s": medians,
        "images_per_s_repeats": rates,
        "ratio_to_synthetic": {name: medians[name] / medians["synthetic"] for name in sources},
    }
    for name, ratio in report["ratio_to_synthetic"].items():
        verdict = "PASS" if ratio >= 0.9 else "FAIL"
        print(
            f"epoch   {name:<10}: {medians[name]:8.2f} img/s, synthetic {medians['synthetic']:8.2f} "
            f"-> ratio {ratio:.3f} (target >= 0.90: {verdict})",
            flush=True,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=None, help="folder of JPEGs (default: sklearn's, replicated)")
    parser.add_argument("--num-images", type=int, default=96, help="replicated sample images (without --images)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--workers", type=lambda v: [int(w) for w in v.split(",")], default=[0, 1], help="comma-separated counts"
    )
    parser.add_argument("--epoch-workers", type=int, default=None, help="workers of the epoch run (default: max)")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--arch", default="efficientnet_lite0", choices=sorted(ARCHS))
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=Path("outputs/bench/input_pipeline.json"))
    parser.add_argument("--results-name", default=None, help="also write bench/results/<name>/input_pipeline.json")
    args = parser.parse_args(argv)
    result = run(args)
    outputs = [args.json_out] + ([RESULTS / args.results_name / "input_pipeline.json"] if args.results_name else [])
    for out in outputs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
