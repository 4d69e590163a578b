"""The MCCL training loop: single process or DDP under torchrun, resumable every epoch.

Order of one step (why it matters): forward -> loss -> backward -> clip -> optimiser step ->
scheduler step -> MCC momentum update (uses the tokens/assignments of *this* forward and no
gradient, as in online clustering) -> EMA update.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from mccl_core.data.gpu_decode import EncodedImages, GpuBatchDecoder, collate_encoded
from mccl_core.metrics import split_tuned_protocol
from mccl_core.models import BaselineModel, MCCLModel, ModelConfig, PrototypeBank, build_model
from mccl_core.models.bundle import BundleMeta, save_bundle
from mccl_core.models.mcc import mcc_advice, mcc_warnings, new_stage_warnings
from mccl_core.training.checkpoint import (
    LAST_NAME,
    capture_rng_state,
    discard_checkpoints,
    epochs_done,
    load_latest,
    previous_path,
    restore_rng_state,
    save_checkpoint,
)
from mccl_core.training.config import TrainConfig
from mccl_core.training.distributed import DistContext, all_gather_objects, cpu_training_threads, init_distributed
from mccl_core.training.ema import ModelEMA
from mccl_core.training.lock import trainer_lock

if TYPE_CHECKING:
    from mccl_core.data.dataset import IntentDataset

log = logging.getLogger(__name__)

CHECKPOINT_NAME = LAST_NAME
FINAL_MODEL_NAME = "model"  # a bundle folder, see mccl_core.models.bundle
HISTORY_NAME = "history.json"


@dataclass
class TrainInputs:
    """Everything the loop needs besides configs; built by :func:`mccl_core.training.run.prepare_inputs`."""

    train_set: IntentDataset
    val_set: IntentDataset | None
    class_names: list[str]
    class_descriptions: list[str] | None = None
    label_embeddings: np.ndarray | None = None
    cooccurrence: np.ndarray | None = None
    prototype_bank: PrototypeBank | None = None
    #: Backbone weights as they stood when CPI ran (so prototypes and backbone match).
    backbone_state: dict[str, torch.Tensor] | None = None


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    lr: float
    seconds: float
    images_per_second: float
    val_macro_f1_split_tuned: float | None = None
    val_threshold_split_tuned: float | None = None
    val_map: float | None = None
    prototype_health: dict[str, float] = field(default_factory=dict)
    #: Learned per-stage gate weights at the end of the epoch (``pki.stage_gate``; empty without one).
    stage_gate: dict[str, float] = field(default_factory=dict)
    #: Under DDP: largest |difference| between any rank's prototypes and rank 0's (0 = identical).
    replica_prototype_max_diff: float | None = None
    #: What the MCC guard found wrong after this epoch (:func:`~mccl_core.models.mcc.mcc_warnings`).
    mcc_warnings: list[str] = field(default_factory=list)
    #: The EMA decay in effect at the epoch's last step (None without EMA): the warm-up made visible.
    ema_decay: float | None = None

    def metrics(self) -> dict[str, float]:
        """Flat numeric view (for MLflow / DVC), fixed names across runs."""
        out = {
            "train_loss": self.train_loss,
            "lr": self.lr,
            "epoch_seconds": self.seconds,
            "train_images_per_second": self.images_per_second,
        }
        if self.val_map is not None:
            macro_f1, threshold = self.split_tuned_val()
            out["val_map"] = self.val_map
            out["val_macro_f1_split_tuned"] = float(macro_f1)
            out["val_threshold_split_tuned"] = float(threshold)
        out.update({f"mcc_{k}": float(v) for k, v in self.prototype_health.items()})
        out.update({f"stage_gate_{k}": float(v) for k, v in self.stage_gate.items()})
        if self.ema_decay is not None:
            out["ema_decay"] = self.ema_decay
        if self.replica_prototype_max_diff is not None:
            out["replica_prototype_max_diff"] = self.replica_prototype_max_diff
        return out

    def split_tuned_val(self) -> tuple[float, float]:
        """``(val macro-F1, threshold)`` of the split-tuned protocol, set together with ``val_map``."""
        if self.val_macro_f1_split_tuned is None or self.val_threshold_split_tuned is None:
            raise ValueError(f"epoch {self.epoch}: val_map is set without the split-tuned val macro-F1 and threshold")
        return self.val_macro_f1_split_tuned, self.val_threshold_split_tuned


@dataclass
class TrainResult:
    history: list[EpochRecord]
    model_path: Path
    checkpoint_path: Path
    resumed_from_epoch: int | None


EpochCallback = Callable[[EpochRecord], None]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _unwrap(model: nn.Module) -> MCCLModel | BaselineModel:
    # The training loop only wraps (in DDP) what build_model returned.
    return cast("MCCLModel | BaselineModel", model.module if isinstance(model, DistributedDataParallel) else model)


def _per_rank_batch(cfg: TrainConfig, ctx: DistContext) -> int:
    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} (global) is not divisible by the {ctx.world_size} training processes"
        )
    return cfg.batch_size // ctx.world_size


def _train_loader(dataset: IntentDataset, cfg: TrainConfig, ctx: DistContext, epoch: int) -> DataLoader:
    # DistributedSampler also for one process: its permutation depends only on (seed, epoch), so
    # the union of the ranks' batches at step i equals the single-process batch i.
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    # A per-epoch generator fixes the worker seeds, so a resumed epoch sees the same augmentations.
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 101 + ctx.rank)
    if cfg.decode_device == "cuda":  # workers read JPEG bytes; the step decodes them on the GPU
        return DataLoader(
            EncodedImages(dataset),
            batch_size=_per_rank_batch(cfg, ctx),
            sampler=sampler,
            num_workers=cfg.num_workers,
            drop_last=True,
            collate_fn=collate_encoded,
            generator=generator,
            persistent_workers=False,
        )
    return DataLoader(
        dataset,
        batch_size=_per_rank_batch(cfg, ctx),
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=ctx.device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )


def _steps_per_epoch(dataset: IntentDataset, cfg: TrainConfig, ctx: DistContext) -> int:
    per_rank_samples = math.floor(len(dataset) / ctx.world_size)
    steps = per_rank_samples // _per_rank_batch(cfg, ctx)
    if steps == 0:
        raise ValueError(f"training set of {len(dataset)} images is smaller than one global batch of {cfg.batch_size}")
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    return steps


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    dataset: IntentDataset,
    ctx: DistContext,
    batch_size: int,
    precision: str = "auto",
    num_workers: int = 0,
    channels_last: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Sigmoid scores [N, C] for ``dataset`` in dataset order; each rank scores its shard, all gather."""
    model.eval()
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    indices: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    bar = tqdm(loader, desc="predict", leave=False, disable=not (progress and ctx.is_main))
    for batch in bar:
        images = batch["image"].to(ctx.device, non_blocking=True)
        if channels_last and ctx.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(ctx.device, precision):
            logits = model(images).logits
        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        indices.append(batch["index"].numpy())
    local = (np.concatenate(indices), np.concatenate(scores))
    gathered = all_gather_objects(local, ctx)
    out = np.full((len(dataset), local[1].shape[1]), np.nan, dtype=np.float32)
    for idx, sc in gathered:  # DistributedSampler pads with repeats: writing twice is harmless
        out[idx] = sc
    if np.isnan(out).any():
        raise RuntimeError("some images received no prediction while gathering across ranks")
    return out


def _label_matrix(dataset: IntentDataset) -> np.ndarray:
    return dataset.label_matrix()


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    inputs: TrainInputs,
    ctx: DistContext | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train (or resume) a model; returns the per-epoch history and the final weights' path.

    The final model bundle (``output_dir/model``, see :mod:`mccl_core.models.bundle`) holds the EMA weights
    when EMA is on (what is evaluated each epoch), so evaluation and serving rebuild it alone.
    """
    ctx = ctx or init_distributed(cfg.device)
    if cfg.decode_device == "cuda" and ctx.device.type != "cuda":
        raise ValueError(
            f"train.decode_device=cuda decodes JPEGs with nvJPEG and needs CUDA, but training runs on {ctx.device}; "
            "set train.decode_device: cpu"
        )
    # Library callers (experiments, benchmarks) get the one-trainer-per-folder lock too; under the
    # CLI it is held already (a no-op here).
    with trainer_lock(Path(cfg.output_dir), is_main=ctx.is_main):
        return _train(model_cfg, cfg, inputs, ctx, on_epoch_end)


def _train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    inputs: TrainInputs,
    ctx: DistContext,
    on_epoch_end: EpochCallback | None,
) -> TrainResult:
    if ctx.device.type == "cpu":
        _set_cpu_threads(ctx)
    seed_everything(cfg.seed, cfg.deterministic)
    out_dir = Path(cfg.output_dir)
    ckpt_path = out_dir / "checkpoints" / CHECKPOINT_NAME
    num_classes = len(inputs.class_names)

    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    model = build_model(
        model_cfg,
        num_classes=num_classes,
        label_embeddings=inputs.label_embeddings,
        cooccurrence=inputs.cooccurrence,
        prototype_bank=inputs.prototype_bank,
    )
    if inputs.backbone_state is not None:
        model.backbone.load_state_dict(inputs.backbone_state)
    model.to(ctx.device)
    use_channels_last = cfg.channels_last and ctx.device.type == "cuda"
    if use_channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.enabled and cfg.sync_batchnorm:
        if ctx.device.type != "cuda":
            raise ValueError("train.sync_batchnorm needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    groups = _param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **adamw_kernel(ctx.device))
    steps_per_epoch = _steps_per_epoch(inputs.train_set, cfg, ctx)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=cfg.pct_start
    )
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_horizon_growth) if cfg.ema_decay > 0 else None
    if ema is not None and ctx.is_main:
        reached_at = ema.steps_to_stated_decay()
        if reached_at >= total_steps:
            log.info(
                "EMA: the stated decay %s is not reached in this run's %d steps (warm-up until step %d; the "
                "last step uses %.5f); raise train.ema_horizon_growth to reach it",
                cfg.ema_decay, total_steps, reached_at, ema.decay_at(total_steps - 1),
            )  # fmt: skip
        else:
            log.info("EMA: decay %s in force from step %d of %d", cfg.ema_decay, reached_at, total_steps)

    history: list[EpochRecord] = []
    start_epoch = 0
    resumed_from: int | None = None
    loaded = _resume_state(ckpt_path, cfg.resume, ctx)
    if loaded is not None:
        state, loaded_from = loaded
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a checkpoint carries the kernel flags of its device
            group.update(adamw_kernel(ctx.device))
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        restore_rng_state(state["rng"])
        history = [EpochRecord(**rec) for rec in state["history"]]
        start_epoch = int(state["epoch"]) + 1
        resumed_from = int(state["epoch"])
        if ctx.is_main:
            log.info("resumed from %s after epoch %s", loaded_from, epochs_done(state))  # 1-based, as written

    if cfg.compile_mode is not None:
        compile_model(model, cfg.compile_mode, distributed=ctx.enabled)
    train_model: nn.Module = model
    if ctx.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    for epoch in range(start_epoch, cfg.epochs):
        record = _train_one_epoch(train_model, ema, optimizer, scheduler, inputs, cfg, ctx, epoch, steps_per_epoch)
        evaluate_now = inputs.val_set is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs)
        if evaluate_now and inputs.val_set is not None:  # evaluate_now implies a val set
            eval_model = ema.module if ema is not None else model
            scores = predict_scores(
                eval_model,
                inputs.val_set,
                ctx,
                _per_rank_batch(cfg, ctx),
                cfg.precision,
                channels_last=use_channels_last,
            )
            val_true = _label_matrix(inputs.val_set)
            tuned = split_tuned_protocol(val_true, scores, split="val")
            record.val_macro_f1_split_tuned = float(tuned.report.macro_f1)
            record.val_threshold_split_tuned = float(tuned.threshold)
            record.val_map = float(tuned.average_precision.map)
        if ctx.enabled:
            record.replica_prototype_max_diff = _replica_prototype_diff(model, ctx)
        # The guard, every epoch: a collapse can start after the first one (45 demo intents: stage4's
        # never-assigned prototypes went 31 % -> 55 % -> 79 % -> 95 % over epochs 1-4).
        record.mcc_warnings = mcc_warnings(record.prototype_health)
        first_warnings = new_stage_warnings(record.mcc_warnings, [w for r in history for w in r.mcc_warnings])
        history.append(record)
        if ctx.is_main:
            log.info(_format_epoch(record, cfg.epochs))
            for warning in first_warnings:
                log.warning("epoch %d: %s. %s", epoch + 1, warning, mcc_advice(model_cfg.mcc.combine))
            save_checkpoint(
                ckpt_path,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": capture_rng_state(),
                    "history": [asdict(r) for r in history],
                    "train_config": cfg.to_dict(),
                    "model_config": model_cfg.to_dict(),
                },
            )
            if on_epoch_end is not None:
                on_epoch_end(record)
        if ctx.enabled:
            torch.distributed.barrier()

    final_path = out_dir / FINAL_MODEL_NAME
    if ctx.is_main:
        final_model = ema.module if ema is not None else model
        if isinstance(final_model, nn.Module) and ctx.enabled and cfg.sync_batchnorm:
            final_model = _revert_sync_batchnorm(copy.deepcopy(final_model))
        meta = BundleMeta.for_model(
            model,
            model_cfg,
            list(inputs.class_names),
            inputs.class_descriptions,
            cfg.image_size,
            extra={"epochs": cfg.epochs, "ema": ema is not None},
        )
        save_bundle(final_path, final_model, meta, inputs.label_embeddings, inputs.cooccurrence, inputs.prototype_bank)
        (out_dir / HISTORY_NAME).write_text(json.dumps([asdict(r) for r in history], indent=2))
    return TrainResult(
        history=history, model_path=final_path, checkpoint_path=ckpt_path, resumed_from_epoch=resumed_from
    )


def _set_cpu_threads(ctx: DistContext) -> None:
    """Intra-op threads for CPU training from the cores this process may use (see
    :func:`cpu_training_threads`): more threads than cores makes every epoch several times slower."""
    threads, source = cpu_training_threads()
    torch.set_num_threads(threads)
    if ctx.is_main:
        log.info("CPU training with %d intra-op thread(s) per process (%s)", threads, source)


def _resume_state(ckpt_path: Path, resume: bool, ctx: DistContext) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint to resume from (``last.pt``, or ``prev.pt`` when ``last.pt`` is unreadable).

    Rank 0 alone moves files (discarded or corrupt ones aside, see :mod:`.checkpoint`); the other
    ranks read after a barrier, so they see the same, already repaired files.
    """
    loaded = None
    if ctx.is_main:
        if not resume:
            discard_checkpoints(ckpt_path, "train.resume is false (--restart)")
        elif not ckpt_path.is_file() and previous_path(ckpt_path).is_file():
            # A prev.pt without last.pt belongs to another run (last.pt was moved aside as
            # stale): it must never become the fallback of this run's checkpoints.
            discard_checkpoints(ckpt_path, f"no {ckpt_path.name} to resume")
        if resume:
            loaded = load_latest(ckpt_path, repair=True)
    if ctx.enabled:
        torch.distributed.barrier()
        if not ctx.is_main and resume:
            loaded = load_latest(ckpt_path, repair=False)
    return loaded


def adamw_kernel(device: torch.device) -> dict[str, Any]:
    """AdamW's multi-tensor kernels: ``fused`` (one CUDA kernel for all parameters) on CUDA,
    ``foreach`` elsewhere (PyTorch's CPU default is a Python loop over the parameters). Same
    update rule; results equal the loop's to float tolerance."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def compile_model(model: MCCLModel | BaselineModel, mode: str, distributed: bool) -> None:
    """``torch.compile`` the train forward in place (``nn.Module.compile``: parameter names, the
    state dict and the DDP wrapping stay as in eager) and, single-process, the MCC prototype update.

    Under DDP the update keeps its eager form: its all-reduce is one call per step either way.
    """
    model.compile(mode=None if mode == "default" else mode)
    if isinstance(model, MCCLModel) and model.clues is not None and not distributed:
        model.clues.compile_update(None if mode == "default" else mode)


def _param_groups(model: MCCLModel | BaselineModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Backbone parameters at ``lr * backbone_lr_scale``, the rest (MCC has none; PKI, decoder,
    head) at ``lr``: pretrained weights are usually fine-tuned more gently than new layers."""
    backbone = {id(p) for p in model.backbone.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in backbone], "lr": cfg.lr * cfg.backbone_lr_scale},
        {"params": [p for p in trainable if id(p) not in backbone], "lr": cfg.lr},
    ]
    return [g for g in groups if g["params"]]


def set_train_mode(model: nn.Module, freeze_bn_stats: bool) -> None:
    """Training mode; with ``freeze_bn_stats`` BatchNorm keeps its running statistics (eval mode).

    Frozen, the backbone computes exactly what the extract step computed for CPI (it runs the
    backbone in eval mode), so the prototypes start on the tokens training actually sees.
    """
    model.train()
    if freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _train_one_epoch(
    train_model: nn.Module,
    ema: ModelEMA | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    inputs: TrainInputs,
    cfg: TrainConfig,
    ctx: DistContext,
    epoch: int,
    steps_per_epoch: int,
) -> EpochRecord:
    model = _unwrap(train_model)
    set_train_mode(train_model, cfg.freeze_bn_stats)
    model.prototype_health(reset=True)
    loader = _train_loader(inputs.train_set, cfg, ctx, epoch)
    use_channels_last = cfg.channels_last and ctx.device.type == "cuda"
    loss_sum = torch.zeros((), device=ctx.device)
    watch = _LossWatch(ctx.device, epoch)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not ctx.is_main, leave=False)
    decoder = None
    if cfg.decode_device == "cuda":
        decoder = GpuBatchDecoder(inputs.train_set.transform, ctx.device, inputs.train_set.max_pixels)
    for step, batch in enumerate(loader):
        if step >= steps_per_epoch:
            break
        if decoder is not None:
            images = decoder(batch["jpeg"])
        else:
            images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["labels"].to(ctx.device, non_blocking=True)
        if use_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(ctx.device, cfg.precision):
            output = train_model(images)
        loss = model.loss(output, labels)
        watch.observe(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        model.update_prototypes(output, labels)
        if ema is not None:
            ema.update(model)
        loss_sum += loss.detach()
        seen += images.shape[0]
        bar.update(1)
        if (step + 1) % HOST_READ_EVERY == 0:
            bar.set_postfix(loss=f"{watch.read():.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
    watch.read()
    bar.close()
    if ctx.enabled:
        torch.distributed.all_reduce(loss_sum)
        loss_sum /= ctx.world_size
    seconds = time.perf_counter() - start
    return EpochRecord(
        epoch=epoch,
        train_loss=float(loss_sum.item() / max(1, steps_per_epoch)),
        lr=float(scheduler.get_last_lr()[-1]),
        seconds=seconds,
        images_per_second=seen * ctx.world_size / max(seconds, 1e-9),
        prototype_health={k: float(v) for k, v in model.prototype_health(reset=False).items()},
        stage_gate=model.stage_gate_weights() if isinstance(model, MCCLModel) else {},
        ema_decay=ema.decay_at(ema.num_updates - 1) if ema is not None and ema.num_updates else None,
    )


#: Steps between the train step's host reads (the non-finite loss check and the progress bar's
#: loss): each read waits for the GPU to drain its queue, so one per step costs throughput.
HOST_READ_EVERY = 10


class _LossWatch:
    """Finds a non-finite loss on the device and reports it at the next :meth:`read`.

    The first bad step and its loss are kept as device tensors (``torch.where``, no sync); the loop
    reads them every :data:`HOST_READ_EVERY` steps and at the end of the epoch, so a non-finite
    loss still fails the run with its epoch and step, at most ``HOST_READ_EVERY - 1`` steps later
    (before any checkpoint of that epoch is written).
    """

    def __init__(self, device: torch.device, epoch: int) -> None:
        self.epoch = epoch
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.last = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        self.last = loss.detach().float()
        newly = (self.first_bad < 0) & ~torch.isfinite(self.last)
        self.first_bad = torch.where(newly, step, self.first_bad)
        self.bad_loss = torch.where(newly, self.last, self.bad_loss)

    def read(self) -> float:
        """One host sync: raises FloatingPointError on a non-finite loss seen so far, else
        returns the last step's loss."""
        first_bad, bad_loss, last = torch.stack(
            [self.first_bad.double(), self.bad_loss.double(), self.last.double()]
        ).tolist()
        if first_bad >= 0:
            raise FloatingPointError(f"non-finite loss {bad_loss} at epoch {self.epoch + 1}, step {int(first_bad) + 1}")
        return float(last)


def _format_epoch(record: EpochRecord, epochs: int) -> str:
    parts = [
        f"epoch {record.epoch + 1}/{epochs}",
        f"loss {record.train_loss:.4f}",
        f"lr {record.lr:.2e}",
        f"{record.images_per_second:.1f} img/s",
    ]
    if record.val_map is not None:
        parts += [
            f"val mAP {100 * record.val_map:.2f}",
            f"val macro-F1 (split-tuned) {100 * record.split_tuned_val()[0]:.2f}",
        ]
    for key, value in record.prototype_health.items():
        parts.append(f"{key} {value:.3g}")
    if record.stage_gate:
        parts.append("stage gate " + " ".join(f"{k}={v:.3f}" for k, v in record.stage_gate.items()))
    return " | ".join(parts)


def _revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm -> BatchNorm2d so single-process evaluation and serving can run the bundle."""
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
    for name, child in module.named_children():
        out.add_module(name, _revert_sync_batchnorm(child))
    return out


#: Divergence above this means the MCC all-reduce is broken; replicas would silently drift apart.
REPLICA_TOLERANCE = 1e-5


def _replica_prototype_diff(model: nn.Module, ctx: DistContext) -> float:
    """Max |p_rank - p_rank0| over all prototype buffers; raises if replicas diverged."""
    protos = {
        k: v.detach().float().cpu()
        for k, v in model.state_dict().items()
        if ".prototypes_" in k or k.startswith("prototypes_")
    }
    gathered = all_gather_objects(protos, ctx)
    reference = gathered[0]
    diff = 0.0
    for other in gathered[1:]:
        for key, value in reference.items():
            diff = max(diff, float((other[key] - value).abs().max()))
    if diff > REPLICA_TOLERANCE:
        raise RuntimeError(f"MCC prototypes differ across DDP ranks by {diff:.3g} (> {REPLICA_TOLERANCE})")
    return diff
