"""Training configuration.

One dataclass holds every knob of the training loop so that ``params.yaml`` (DVC), the Kubeflow
train step and tests all describe a run the same way. Defaults follow the Query2Label family on
Intentonomy (docs/model.md, "Training recipe"); the demo pipeline overrides size and epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mccl_core.config import ConfigError, from_dict


@dataclass
class TrainConfig:
    """Hyper-parameters and run settings of :func:`mccl_core.training.train`."""

    epochs: int = 30
    #: Global batch size; under DDP each of the ``world_size`` processes gets ``batch_size // world_size``.
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-2
    #: Peak learning rate of the backbone relative to ``lr`` (the new layers: PKI, decoder, head).
    backbone_lr_scale: float = 1.0
    #: OneCycle warm-up fraction.
    pct_start: float = 0.2
    #: EMA decay of the weights (0 disables EMA); MCC's prototypes are averaged with them.
    ema_decay: float = 0.9997
    #: EMA warm-up: the averaging horizon ``1 / (1 - decay)`` starts at 1 step and grows by this
    #: many steps per step until the stated decay is reached (:class:`~mccl_core.training.ema.ModelEMA`).
    #: 1/9 is timm's ``(1 + n) / (10 + n)``: the EMA covers about the last ninth of the steps so far,
    #: which suits any run length but reaches 0.9997 only after ~30k steps. 1 averages every step so
    #: far until the stated horizon (0.9997: from step 3,333 on). Each epoch records the decay in
    #: effect (``ema_decay`` in the history and MLflow); the log says when the stated one is reached.
    ema_horizon_growth: float = 1 / 9
    #: Max global gradient norm (0 disables clipping).
    grad_clip: float = 10.0
    image_size: int = 224
    #: Train-time augmentation (RandomResizedCrop, flip, RandAugment); off gives deterministic inputs.
    augment: bool = True
    #: Lower bound of RandomResizedCrop's area scale (1.0 keeps the whole image: small clues survive).
    crop_scale_min: float = 0.6
    randaugment: bool = True
    #: RandAugment strength: operations per image and magnitude (of torchvision's 31 bins). The
    #: default is deliberately light (1 op at 5): an intent can hinge on one small clue, and strong
    #: colour or geometric operations can erase or change it. torchvision's default is 2 at 9.
    randaugment_ops: int = 1
    randaugment_magnitude: int = 5
    #: Cutout (RandomErasing) probability.
    erase_prob: float = 0.0
    num_workers: int = 2
    seed: int = 0
    #: ``torch.use_deterministic_algorithms`` + no cudnn benchmark: bit-exact resume on CPU.
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: ``auto``: bf16 autocast on CUDA, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: channels_last memory format (CUDA only; it slows CPU convolutions).
    channels_last: bool = True
    #: ``torch.compile`` the model's train forward (MCC assignment included) and the MCC
    #: prototype update: ``false`` (eager), ``default`` or ``max-autotune`` (longer compile, faster
    #: GPU kernels). The first steps pay the compilation; numbers equal eager's to float tolerance.
    compile: Literal[False, "default", "max-autotune"] = False
    #: Where train images are decoded and augmented: ``cpu`` (PIL in the DataLoader workers) or
    #: ``cuda`` (nvJPEG ``decode_jpeg`` + resize/crop/flip/normalise on the GPU in the train step,
    #: see :mod:`mccl_core.data.gpu_decode`; CUDA only, JPEG files only).
    decode_device: Literal["cpu", "cuda"] = "cpu"
    #: Convert BatchNorm to SyncBatchNorm when more than one process trains.
    sync_batchnorm: bool = False
    #: Keep BatchNorm layers on their running statistics during training (affine weights still
    #: learn). On by default, for three reasons: CPI clusters tokens of the backbone in this mode
    #: (so the prototypes match the tokens the first training step sees - with batch statistics
    #: they would not), pretrained running statistics are better than those of small per-GPU
    #: batches, and a step does not depend on how the global batch is split across processes.
    freeze_bn_stats: bool = True
    #: Cap on optimiser steps per epoch (0: the whole epoch) - for smoke tests and sweeps.
    max_steps_per_epoch: int = 0
    #: Evaluate on val every N epochs (the last epoch is always evaluated).
    eval_every: int = 1
    output_dir: Path = field(default_factory=lambda: Path("outputs/train"))
    #: Resume from ``output_dir/checkpoints/last.pt`` when it exists (from ``prev.pt``, the epoch
    #: before, when ``last.pt`` is unreadable). False: move existing checkpoints aside
    #: (``*.discarded-<time>``, never deleted) and train from scratch (``mccl train --restart``).
    resume: bool = True

    def __post_init__(self) -> None:
        # YAML ``false`` is the bool False; 0 or True would pass the Literal check (0 == False).
        if self.compile is not False and self.compile not in ("default", "max-autotune"):
            raise ConfigError(f"train.compile={self.compile!r}: must be false, 'default' or 'max-autotune'")
        if not self.ema_horizon_growth > 0:
            raise ConfigError(f"train.ema_horizon_growth={self.ema_horizon_growth}: must be > 0 (steps per step)")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ConfigError(f"train.crop_scale_min={self.crop_scale_min}: must be in (0, 1]")
        if self.randaugment_ops < 1 or not 0 <= self.randaugment_magnitude <= 30:
            raise ConfigError(
                f"train.randaugment_ops={self.randaugment_ops} / randaugment_magnitude="
                f"{self.randaugment_magnitude}: ops must be >= 1 and magnitude in [0, 30] (torchvision's 31 bins)"
            )
        if self.decode_device not in ("cpu", "cuda"):
            raise ConfigError(f"train.decode_device={self.decode_device!r}: must be 'cpu' or 'cuda'")

    @property
    def compile_mode(self) -> str | None:
        """The ``torch.compile`` mode (None: eager, no compilation)."""
        return None if self.compile is False else str(self.compile)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a params.yaml section, rejecting unknown keys by name."""
        return from_dict(cls, values, "train")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["output_dir"] = str(self.output_dir)
        return out
