"""Cluster step: CPI over the extract step's token shards, plus the PKI label-embedding cache.

Outputs: ``prototypes.safetensors`` (the prototype bank training loads), the frequency-aware
allocation table as ``allocation.csv`` and ``allocation.md``, ``label_embeddings.npz`` (the
sentence-encoder embeddings of the class texts, so training needs no text encoder) and
``cluster.json`` (summary / metrics).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mccl_core.data import load_split
from mccl_core.models import (
    ModelConfig,
    build_label_embeddings,
    format_allocation_table,
)
from mccl_core.steps.common import ValidatedData, write_json, write_text
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.steps.layout import (
    ALLOCATION_CSV,
    ALLOCATION_MD,
    EMBEDDINGS_FILE,
    FEATURES_DIR,
    PROTOTYPES_FILE,
    VALIDATED_ANNOTATIONS_DIR,
    VALIDATED_DATA_FILE,
)
from mccl_core.steps.layout import CLUSTER_SUMMARY_FILE as SUMMARY_FILE
from mccl_core.tracking.steps import TrackingOptions, tracked_step
from mccl_core.training.distributed import resolve_device
from mccl_core.training.token_shards import cluster_token_shards

log = logging.getLogger(__name__)


@dataclass
class ClusterStepConfig:
    """The ``cluster`` section of params.yaml (CPI itself is configured in ``model.cpi``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class ClusterResult:
    prototypes: Path
    label_embeddings: Path
    allocation_csv: Path
    allocation_md: Path
    summary: dict[str, Any]
    mlflow_run_id: str | None


def run_cluster(
    cfg: ClusterStepConfig,
    validated: ValidatedData,
    model_cfg: ModelConfig,
    features_dir: Path,
    out_dir: Path,
    tracking: TrackingOptions | None = None,
    all_params: dict[str, Any] | None = None,
) -> ClusterResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {
        "cluster": asdict(cfg),
        "model": {"cpi": asdict(model_cfg.cpi), "pki": {"label_text": model_cfg.pki.label_text}},
    }
    with tracked_step("cluster", tracking, params, all_params, validated.data_hash) as run:
        train = load_split(validated.data, "train")
        embeddings_path = out_dir / EMBEDDINGS_FILE
        embeddings = build_label_embeddings(
            model_cfg.pki.label_text, train.class_names, train.class_descriptions, embeddings_path
        )

        device = resolve_device(cfg.device)
        bank = cluster_token_shards(Path(features_dir), model_cfg.cpi, device=device)
        bank_path = bank.save(out_dir / PROTOTYPES_FILE)

        rows = list(bank.allocation)
        csv_path = out_dir / ALLOCATION_CSV
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class_id", "class_name", "train_images", "prototypes"])
            for row in rows:
                writer.writerow([row.class_id, row.class_name, row.count, row.prototypes])
        md_lines = [
            "# CPI prototype allocation",
            "",
            "| id | class | train images (n_c) | prototypes (K_c) |",
            "|---:|---|---:|---:|",
        ]
        md_lines += [f"| {r.class_id} | {r.class_name} | {r.count} | {r.prototypes} |" for r in rows]
        md_lines += ["", f"Total prototypes per stage: {sum(r.prototypes for r in rows)}; stages: "
                     + ", ".join(f"{s} ({bank.num_prototypes(s)} x {bank.prototypes[s].shape[1]})" for s in bank.stages)]  # fmt: skip
        md_path = write_text(out_dir / ALLOCATION_MD, "\n".join(md_lines) + "\n")
        log.info("CPI allocation:\n%s", format_allocation_table(rows))

        prototypes_per_stage = {s: bank.num_prototypes(s) for s in bank.stages}
        summary = {
            "classes": bank.num_classes,
            "stages": list(bank.stages),
            "prototypes_per_stage": prototypes_per_stage,
            "total_allocated": sum(r.prototypes for r in rows),
            "label_embedding_dim": int(embeddings.shape[1]),
            "device": str(device),
        }
        write_json(out_dir / SUMMARY_FILE, summary)
        run.log_metrics({f"cpi_prototypes_{s}": float(n) for s, n in prototypes_per_stage.items()})
        for path in (csv_path, md_path, out_dir / SUMMARY_FILE):
            run.log_artifact(path, "cpi")
        return ClusterResult(bank_path, embeddings_path, csv_path, md_path, summary, run.run_id)


# ------------------------------------------------------------------------------- step contract


@dataclass(frozen=True)
class ClusterParams:
    """Sections ``cluster`` (where to run) and ``model`` (CPI itself: ``model.cpi``)."""

    cluster: ClusterStepConfig
    model: ModelConfig


def run(inputs: Mapping[str, Path], out_dir: Path, config: ClusterParams, tracking: TrackingOptions) -> StepOutcome:
    validated = ValidatedData.load(inputs["validate"], folders=inputs)
    result = run_cluster(config.cluster, validated, config.model, Path(inputs["extract"]) / FEATURES_DIR, out_dir, tracking,
                         all_params={"cluster": asdict(config.cluster), "model": config.model.to_dict()})  # fmt: skip
    return StepOutcome(
        summary=f"prototype bank: {result.prototypes}; allocation: {result.allocation_md}",
        metrics={f"prototypes_{s}": float(n) for s, n in result.summary["prototypes_per_stage"].items()},
        markdown=result.allocation_md.read_text(encoding="utf-8"),
        mlflow_run_id=result.mlflow_run_id or "",
    )


SPEC = StepSpec(
    name="cluster",
    description="CPI prototypes (allocation table) and the PKI label-embedding cache",
    sections=("cluster", "model"),
    config=ClusterParams,
    optional_sections=("cluster",),
    inputs=(
        StepInput("validate", reads=(VALIDATED_DATA_FILE, VALIDATED_ANNOTATIONS_DIR)),
        StepInput("extract", reads=(FEATURES_DIR,)),
    ),
    output_kind="Model",
    run=run,
)
