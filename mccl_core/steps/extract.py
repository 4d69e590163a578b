"""Extract step: backbone patch tokens of the training images -> Parquet shards (for CPI).

CPI clusters tokens of the backbone *as it stands before training*; this step therefore also
saves that backbone's state dict (``backbone_init.pt``), and the train step starts from exactly
these weights, so prototypes and backbone match. Shards are resumable (finished shards are kept
when the inputs are unchanged; see :func:`mccl_core.training.token_shards.write_token_shards`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mccl_core.data import load_split
from mccl_core.hashing import sha256_of
from mccl_core.models import ModelConfig
from mccl_core.steps.common import ValidatedData, write_json
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.steps.layout import BACKBONE_INIT_FILE, FEATURES_DIR, VALIDATED_ANNOTATIONS_DIR, VALIDATED_DATA_FILE
from mccl_core.steps.layout import EXTRACT_SUMMARY_FILE as SUMMARY_FILE
from mccl_core.tracking.steps import TrackingOptions, tracked_step
from mccl_core.training.config import TrainConfig
from mccl_core.training.distributed import resolve_device
from mccl_core.training.run import eval_transform, initial_backbone
from mccl_core.training.token_shards import ExtractConfig, write_token_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractStepConfig(ExtractConfig):
    """The ``extract`` section of params.yaml: the shard settings plus where to run (``device``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"

    def extract_config(self) -> ExtractConfig:
        values = asdict(self)
        values.pop("device")
        return ExtractConfig(**values)


@dataclass
class ExtractResult:
    features_dir: Path
    backbone_init: Path
    summary: dict[str, Any]
    mlflow_run_id: str | None


def run_extract(
    cfg: ExtractStepConfig,
    validated: ValidatedData,
    model_cfg: ModelConfig,
    image_size: int,
    seed: int,
    out_dir: Path,
    tracking: TrackingOptions | None = None,
    all_params: dict[str, Any] | None = None,
) -> ExtractResult:
    """Save the initial backbone and write token shards of the validated training images.

    ``image_size`` and ``seed`` are the train section's: tokens must come from the images as
    training sees them at evaluation resolution, and from the backbone training starts from.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"extract": asdict(cfg), "model": {"backbone": asdict(model_cfg.backbone)},
              "train": {"image_size": image_size, "seed": seed}}  # fmt: skip
    with tracked_step("extract", tracking, params, all_params, validated.data_hash) as run:
        backbone = initial_backbone(model_cfg, seed)
        init_path = out_dir / BACKBONE_INIT_FILE
        tmp = init_path.with_name(init_path.name + ".tmp")
        torch.save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, tmp)
        os.replace(tmp, init_path)

        dataset = load_split(validated.data, "train", transform=eval_transform(model_cfg, image_size))
        device = resolve_device(cfg.device)
        fingerprint = sha256_of(
            {
                "backbone": asdict(model_cfg.backbone),
                "seed": seed,
                "image_size": image_size,
                "data": validated.data_hash,
            }
        )
        manifest = write_token_shards(
            backbone, dataset, out_dir / FEATURES_DIR, cfg.extract_config(), device, inputs_fingerprint=fingerprint
        )
        summary = {
            "images": manifest["num_images"],
            "shards": manifest["num_shards"],
            "shards_reused": manifest["shards_reused"],
            "stages": manifest["stages"],
            "stage_channels": manifest["stage_channels"],
            "tokens_per_image": cfg.tokens_per_image,
            "image_size": image_size,
            "device": str(device),
            # Arch, weights origin (package version + file hash / URL) and the input normalisation.
            "backbone": backbone.describe(),
        }
        write_json(out_dir / SUMMARY_FILE, summary)
        run.log_metrics({"extract_images": manifest["num_images"], "extract_shards": manifest["num_shards"],
                         "extract_shards_reused": manifest["shards_reused"]})  # fmt: skip
        run.log_artifact(out_dir / SUMMARY_FILE, "extract")
        return ExtractResult(out_dir / FEATURES_DIR, init_path, summary, run.run_id)


# ------------------------------------------------------------------------------- step contract


@dataclass(frozen=True)
class ExtractParams:
    """Sections ``extract``, ``model`` (the backbone) and ``train`` (``image_size``, ``seed``)."""

    extract: ExtractStepConfig
    model: ModelConfig
    train: TrainConfig

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def seed(self) -> int:
        return self.train.seed


def run(inputs: Mapping[str, Path], out_dir: Path, config: ExtractParams, tracking: TrackingOptions) -> StepOutcome:
    validated = ValidatedData.load(inputs["validate"], folders=inputs)
    result = run_extract(config.extract, validated, config.model, config.image_size, config.seed, out_dir, tracking,
                         all_params={"extract": asdict(config.extract), "model": config.model.to_dict(),
                                     "train": {"image_size": config.image_size, "seed": config.seed}})  # fmt: skip
    summary = result.summary
    return StepOutcome(
        summary=f"token shards: {result.features_dir} ({summary['shards']} shards, {summary['shards_reused']} reused); "
                f"initial backbone: {result.backbone_init}",
        metrics={"images": float(summary["images"]), "shards": float(summary["shards"])},
        mlflow_run_id=result.mlflow_run_id or "",
    )  # fmt: skip


SPEC = StepSpec(
    name="extract",
    description="patch tokens of the initial backbone -> Parquet shards (resumable) + backbone_init.pt",
    sections=("extract", "model", "train"),
    config=ExtractParams,
    optional_sections=("extract",),
    inputs=(
        StepInput("validate", reads=(VALIDATED_DATA_FILE, VALIDATED_ANNOTATIONS_DIR)),
        StepInput("demo", reads=(".",), optional=True),
    ),
    output_kind="Dataset",
    run=run,
)
