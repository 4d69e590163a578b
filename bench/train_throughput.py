"""Train-step throughput of MCCL vs. the plain backbone (pool + linear), per backbone arch.

A train step is forward + loss + backward + optimiser step (+ prototype update for MCCL), on
synthetic batches already on the device (no data loading), with the same batch, resolution,
precision and memory format for both models. The two models are timed in the same process,
alternating repeats (plain, MCCL, plain, MCCL, ...) after a warm-up, and the median images/s of
each is reported with their ratio. A separate instrumented pass splits the MCCL step into
backbone / MCC / PKI+decoder / loss (forward + backward each) / optimiser / prototype update,
using CUDA events on GPU (autograd hooks mark the backward boundaries) and perf_counter on CPU.

Both archs the project ships as defaults are measured in the same run: EfficientNet-Lite0 (the
offline demo default) and ResNet-101 (the paper). A light backbone makes the decoder and MCC
relatively heavier, so the split says where the time goes whenever the ratio falls below 0.8.

Each arch runs in each of ``--modes``: ``eager`` and ``compiled`` (``torch.compile`` of both
models' forward and MCCL's prototype update, as ``train.compile`` does; the split pass is eager
only, compiled kernels fuse across its boundaries). Optimisers use the training loop's AdamW
kernel (fused on CUDA, foreach elsewhere). On CUDA each model's peak memory is reported.

Target: MCCL >= 0.90x the plain backbone's train throughput at 224 px (printed as PASS/FAIL;
the exit code is 0 either way). Defaults are small CPU settings; the prepared GPU run is

    python bench/train_throughput.py --image-size 224 --batch-size 128 --precision bf16 \
        --channels-last --modes eager,compiled --results-name <card>-<date>
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mccl_core.models import ARCHS, MCCLModel, ModelConfig, ModelOutput, MultiLabelBCELoss, build_model
from mccl_core.training.loop import adamw_kernel, compile_model

TARGET_RATIO = 0.90
#: Below this ratio the report says which component takes the extra time.
PROFILE_RATIO = 0.80
DEFAULT_ARCHS = ("efficientnet_lite0", "resnet101")
MODES = ("eager", "compiled")
RESULTS = Path(__file__).resolve().parent / "results"
SPLIT_KEYS = ("backbone", "mcc", "decoder", "loss", "optimizer", "prototype_update")


@dataclass
class BenchSettings:
    arch: str = "efficientnet_lite0"
    image_size: int = 112
    batch_size: int = 8
    precision: str = "fp32"
    channels_last: bool = False
    device: str = "auto"
    num_classes: int = 28
    warmup: int = 2
    #: timed steps per repeat / number of interleaved repeats; None = 1 x 10 on CPU (single-step
    #: alternation is the most robust against other load on a small machine), 10 x 5 on CUDA
    #: (multi-step blocks keep the GPU queue full, as in training).
    steps: int | None = None
    repeats: int | None = None
    split_steps: int = 3
    seed: int = 0
    #: CPU intra-op threads (None: torch's default). 1 gives stable numbers on a shared machine.
    threads: int | None = None
    #: ``eager`` or ``compiled`` (torch.compile with ``compile_mode``).
    mode: str = "eager"
    compile_mode: str = "default"
    #: Also time the step as it was before issue 23 (nn.TransformerDecoder, AdamW's default
    #: kernel, a host sync per step for the finiteness check), interleaved: eager mode only.
    before: bool = False


class _Clock:
    """CUDA events on GPU (no host sync inside a step), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end)) if self.cuda else (end - start) * 1000.0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def synthetic_cooccurrence(num_classes: int, seed: int) -> np.ndarray:
    """Co-occurrence counts of a synthetic multi-label set with Intentonomy-like imbalance
    (per-class counts spanning ~16x) and a correlated second label, so the label graph has edges."""
    rng = np.random.default_rng(seed)
    weights = np.geomspace(1.0, 1.0 / 16.0, num_classes)
    primary = rng.choice(num_classes, size=4000, p=weights / weights.sum())
    labels = np.zeros((4000, num_classes))
    labels[np.arange(4000), primary] = 1
    second = rng.random(4000) < 0.6
    labels[np.flatnonzero(second), (primary[second] + 1) % num_classes] = 1
    return labels.T @ labels


def _autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _time_block(step: Callable[[], None], steps: int, clock: _Clock) -> float:
    """Seconds for ``steps`` consecutive steps (one sync before and after)."""
    clock.sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    clock.sync()
    return time.perf_counter() - start


def _mccl_split_step(
    model: MCCLModel,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    clock: _Clock,
) -> dict[str, float]:
    """One instrumented train step; returns milliseconds per component (forward + backward)."""
    marks: dict[str, Any] = {}

    def mark_on_grad(name: str) -> Callable[[Tensor], None]:
        def hook(_grad: Tensor) -> None:
            marks[name] = clock.mark()  # the last tensor of a group to receive its gradient wins

        return hook

    marks["start"] = clock.mark()
    with autocast():
        maps = model.forward_features(images)
        marks["backbone_fwd"] = clock.mark()
        tokens_in, grids = model.maps_to_tokens(maps)
        assert model.clues is not None
        tokens, state = model.clues(tokens_in)
        marks["mcc_fwd"] = clock.mark()
        logits = model.forward_head(tokens, grids)
        marks["decoder_fwd"] = clock.mark()
    output = ModelOutput(logits, state)
    loss = model.loss(output, labels)
    marks["loss_fwd"] = clock.mark()
    logits.register_hook(mark_on_grad("loss_bwd"))
    for t in tokens:
        t.register_hook(mark_on_grad("decoder_bwd"))
    for t in tokens_in:
        t.register_hook(mark_on_grad("mcc_bwd"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    marks["backbone_bwd"] = clock.mark()
    optimizer.step()
    marks["optimizer"] = clock.mark()
    model.update_prototypes(output, labels)
    marks["prototype_update"] = clock.mark()
    clock.sync()
    ms = clock.ms
    return {
        "backbone": ms(marks["start"], marks["backbone_fwd"]) + ms(marks["mcc_bwd"], marks["backbone_bwd"]),
        "mcc": ms(marks["backbone_fwd"], marks["mcc_fwd"]) + ms(marks["decoder_bwd"], marks["mcc_bwd"]),
        "decoder": ms(marks["mcc_fwd"], marks["decoder_fwd"]) + ms(marks["loss_bwd"], marks["decoder_bwd"]),
        "loss": ms(marks["decoder_fwd"], marks["loss_fwd"]) + ms(marks["loss_fwd"], marks["loss_bwd"]),
        "optimizer": ms(marks["backbone_bwd"], marks["optimizer"]),
        "prototype_update": ms(marks["optimizer"], marks["prototype_update"]),
        "total": ms(marks["start"], marks["prototype_update"]),
    }


class _LegacyDecoderStack(nn.Module):
    """The decoder as it ran before issue 23: ``nn.TransformerDecoder`` (same state-dict keys)."""

    def __init__(self, stack: nn.Module) -> None:
        super().__init__()
        first = stack.layers[0]
        layer = nn.TransformerDecoderLayer(
            first.linear1.in_features,
            first.self_attn.num_heads,
            first.linear1.out_features,
            first.dropout.p,
            batch_first=True,
        )
        self.decoder = nn.TransformerDecoder(
            layer, num_layers=len(stack.layers), norm=nn.LayerNorm(layer.linear1.in_features)
        )
        self.decoder.load_state_dict(stack.state_dict())

    def forward(self, x: Tensor, memory: Tensor, need_weights: bool = False) -> tuple[Tensor, None]:
        return self.decoder(x, memory), None


def _with_legacy_decoder(model: MCCLModel) -> MCCLModel:
    model.decoder.decoder = _LegacyDecoderStack(model.decoder.decoder)
    return model


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    """Run the interleaved comparison and the split pass; returns a JSON-serialisable dict."""
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if settings.steps is None:
        settings.steps = 10 if device.type == "cuda" else 1
    if settings.repeats is None:
        settings.repeats = 5 if device.type == "cuda" else 10
    torch.manual_seed(settings.seed)
    clock = _Clock(device)
    autocast = _autocast(device, settings.precision)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    num_classes = settings.num_classes
    cooccurrence = synthetic_cooccurrence(num_classes, settings.seed)
    # Default MCCL config; random prototypes with the CPI allocation cost exactly what CPI ones do.
    # Random backbone weights cost exactly what pretrained ones do (and need no download).
    stages = list(ARCHS[settings.arch].stage_names[-2:])
    backbone = {"arch": settings.arch, "stages": stages, "weights": "none"}
    cfg = ModelConfig.from_dict({"backbone": backbone, "use_cpi": False, "mcc": {"residual": 0.5}})
    embeddings = torch.nn.functional.normalize(torch.randn(num_classes, 384), dim=1).numpy()
    mccl = build_model(cfg, num_classes, embeddings, cooccurrence, None)
    plain = build_model(
        ModelConfig.from_dict({"variant": "baseline", "backbone": backbone}), num_classes, None, None, None
    )
    bce = MultiLabelBCELoss()
    models: dict[str, nn.Module] = {"plain": plain, "mccl": mccl}
    for model in models.values():
        model.to(device=device, memory_format=memory_format).train()
    optimizers = {
        name: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-2, **adamw_kernel(device))
        for name, m in models.items()
    }
    if settings.before:
        if settings.mode != "eager":
            raise ValueError("the before-variant is timed in eager mode only")
        models["plain_before"] = copy.deepcopy(plain)
        models["mccl_before"] = _with_legacy_decoder(copy.deepcopy(mccl))
        for name in ("plain_before", "mccl_before"):  # AdamW's default kernel choice
            optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4, weight_decay=1e-2)
    if settings.mode == "compiled":
        for model in models.values():
            compile_model(model, settings.compile_mode, distributed=False)  # type: ignore[arg-type]
    elif settings.mode != "eager":
        raise ValueError(f"mode must be one of {MODES}, got {settings.mode!r}")

    g = torch.Generator().manual_seed(settings.seed)
    images = torch.randn(settings.batch_size, 3, settings.image_size, settings.image_size, generator=g)
    images = images.to(device).contiguous(memory_format=memory_format)
    labels = (torch.rand(settings.batch_size, num_classes, generator=g) < 2.0 / num_classes).float().to(device)

    def plain_step() -> None:
        with autocast():
            logits = plain(images).logits
        loss = bce(logits, labels)
        optimizers["plain"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["plain"].step()

    def mccl_step() -> None:
        with autocast():
            output = mccl(images)
        loss = mccl.loss(output, labels)
        optimizers["mccl"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["mccl"].step()
        mccl.update_prototypes(output, labels)

    steps = {"plain": plain_step, "mccl": mccl_step}
    if settings.before:
        counter = [0]

        def before_step(name: str) -> Callable[[], None]:
            model = models[name]

            def step() -> None:
                with autocast():
                    output = model(images)
                loss = bce(output.logits, labels) if name == "plain_before" else model.loss(output, labels)
                if not torch.isfinite(loss):  # the old per-step host sync
                    raise FloatingPointError("non-finite loss")
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[name].step()
                model.update_prototypes(output, labels)
                counter[0] += 1
                if counter[0] % 10 == 0:
                    loss.item()  # the old progress bar read

            return step

        steps.update({name: before_step(name) for name in ("plain_before", "mccl_before")})
    names = list(steps)
    peak_memory: dict[str, float | None] = {name: None for name in names}
    compile_seconds: dict[str, float | None] = {name: None for name in names}
    for name in names:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if settings.mode == "compiled":  # the first step compiles: timed apart from the warm-up
            compile_seconds[name] = _time_block(steps[name], 1, clock)
        _time_block(steps[name], settings.warmup, clock)
        if device.type == "cuda":
            peak_memory[name] = torch.cuda.max_memory_allocated(device) / 2**30
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(settings.repeats):
        for name in names:
            seconds = _time_block(steps[name], settings.steps, clock)
            rates[name].append(settings.steps * settings.batch_size / seconds)

    split_ms = None
    if settings.mode == "eager":  # compiled kernels fuse across the split's boundaries
        splits = [
            _mccl_split_step(mccl, optimizers["mccl"], images, labels, autocast, clock)
            for _ in range(settings.split_steps)
        ]
        split_ms = {k: statistics.median(s[k] for s in splits) for k in (*SPLIT_KEYS, "total")}

    plain_rate = statistics.median(rates["plain"])
    mccl_rate = statistics.median(rates["mccl"])
    ratio = mccl_rate / plain_rate
    return {
        "benchmark": "train_throughput",
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "plain_images_per_s": plain_rate,
        "mccl_images_per_s": mccl_rate,
        "plain_images_per_s_repeats": rates["plain"],
        "mccl_images_per_s_repeats": rates["mccl"],
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_applies": settings.image_size == 224,
        "verdict": "PASS" if ratio >= TARGET_RATIO else "FAIL",
        "needs_profile": ratio < PROFILE_RATIO and split_ms is not None,
        "mccl_split_ms": split_ms,
        "before": None
        if not settings.before
        else {
            "plain_images_per_s": statistics.median(rates["plain_before"]),
            "mccl_images_per_s": statistics.median(rates["mccl_before"]),
            "ratio": statistics.median(rates["mccl_before"]) / statistics.median(rates["plain_before"]),
            "plain_images_per_s_repeats": rates["plain_before"],
            "mccl_images_per_s_repeats": rates["mccl_before"],
        },
        "peak_memory_gib": peak_memory,
        "compile_seconds": compile_seconds,
        "mccl_parameters": sum(p.numel() for p in mccl.parameters()),
        "plain_parameters": sum(p.numel() for p in plain.parameters()),
    }


def format_report(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"device: {result['device']}  torch {result['torch']}",
        f"{s['arch']}  {s['mode']}  {s['image_size']}px  batch {s['batch_size']}  {s['precision']}"
        f"{'  channels_last' if s['channels_last'] else ''}  ({s['repeats']} repeats x {s['steps']} steps, interleaved)",
        f"plain        : {result['plain_images_per_s']:9.2f} images/s  (repeats {', '.join(f'{r:.2f}' for r in result['plain_images_per_s_repeats'])})",
        f"MCCL         : {result['mccl_images_per_s']:9.2f} images/s  (repeats {', '.join(f'{r:.2f}' for r in result['mccl_images_per_s_repeats'])})",
        f"ratio MCCL/plain: {result['ratio']:.3f}  target >= {result['target_ratio']:.2f} -> {result['verdict']}"
        + ("" if result["target_applies"] else "  (target is defined at 224 px)"),
    ]
    if result["before"] is not None:
        before = result["before"]
        lines.append(
            f"before (same run): plain {before['plain_images_per_s']:.2f}, MCCL {before['mccl_images_per_s']:.2f} "
            f"images/s, ratio {before['ratio']:.3f}  (now {result['ratio']:.3f})"
        )
    peak = result["peak_memory_gib"]
    if peak["mccl"] is not None:
        lines.append(f"peak GPU memory: plain {peak['plain']:.2f} GiB, MCCL {peak['mccl']:.2f} GiB")
    if result["compile_seconds"]["mccl"] is not None:
        seconds = result["compile_seconds"]
        lines.append(f"first (compiling) step: plain {seconds['plain']:.1f} s, MCCL {seconds['mccl']:.1f} s")
    if result["mccl_split_ms"] is None:
        return "\n".join(lines)
    lines.append("MCCL step split (median ms, forward + backward per component):")
    if result["needs_profile"]:
        split = {k: v for k, v in result["mccl_split_ms"].items() if k not in ("total", "backbone")}
        heaviest = max(split, key=split.get)
        lines.insert(-1, f"ratio < {PROFILE_RATIO}: outside the backbone, {heaviest} takes the most time (split below)")
    total = result["mccl_split_ms"]["total"]
    for key in SPLIT_KEYS:
        value = result["mccl_split_ms"][key]
        lines.append(f"  {key:<17}{value:9.2f} ms  {100 * value / total:5.1f}%")
    lines.append(f"  {'total':<17}{total:9.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = BenchSettings()
    parser.add_argument(
        "--archs",
        default=",".join(DEFAULT_ARCHS),
        help=f"comma-separated backbone archs, each timed against its plain model (of {sorted(ARCHS)})",
    )
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu or cuda[:i]")
    parser.add_argument("--num-classes", type=int, default=defaults.num_classes)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 1 CPU / 10 CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 10 CPU / 5 CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--split-steps", type=int, default=defaults.split_steps)
    parser.add_argument("--modes", default="eager", help=f"comma-separated, of {MODES}")
    parser.add_argument(
        "--before", action="store_true", help="also time the pre-issue-23 step, interleaved (eager mode)"
    )
    parser.add_argument("--compile-mode", choices=("default", "max-autotune"), default="default")
    parser.add_argument("--json-out", type=Path, default=Path("outputs/bench/train_throughput.json"))
    parser.add_argument(
        "--results-name", default=None, help="also write the JSON to bench/results/<name>/train_throughput.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {unknown}; valid: {list(MODES)}")
    results = []
    for arch, mode in [(a.strip(), m) for a in args.archs.split(",") for m in modes]:
        settings = BenchSettings(
            mode=mode,
            compile_mode=args.compile_mode,
            before=args.before and mode == "eager",
            arch=arch,
            image_size=args.image_size,
            batch_size=args.batch_size,
            precision=args.precision,
            channels_last=args.channels_last,
            device=args.device,
            num_classes=args.num_classes,
            warmup=args.warmup,
            steps=args.steps,
            repeats=args.repeats,
            split_steps=args.split_steps,
            threads=args.threads,
        )
        result = run_benchmark(settings)
        print(format_report(result), flush=True)
        results.append(result)
    print(
        "summary: "
        + ", ".join(
            f"{r['settings']['arch']} {r['settings']['mode']} MCCL/plain {r['ratio']:.3f} "
            f"({r['mccl_images_per_s']:.1f} vs {r['plain_images_per_s']:.1f} img/s)"
            for r in results
        )
    )
    outputs = [args.json_out]
    if args.results_name:
        outputs.append(RESULTS / args.results_name / "train_throughput.json")
    for out in outputs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
