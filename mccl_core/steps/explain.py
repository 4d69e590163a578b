"""Explain step: prototype gallery, example explanations and the pointing game of the trained model.

Runs after ``evaluate`` (it takes the decision threshold the evaluate step tuned on val).

Outputs:

* ``gallery/``: one PNG per class (each prototype's nearest training patches), ``index.html``,
  ``gallery.json`` (unreachable and near-duplicate prototypes flagged);
* ``explanations/``: ``<image id>.png`` + ``.json`` for the first ``examples`` test images;
* ``pointing.json``: the pointing game on the test split when the data carries the demo's clue
  boxes; otherwise the reason it was skipped (no failure);
* ``metrics.json``: the headline numbers (also the step's metrics: ``metrics/explain.json``).

A baseline model (no intent queries, no prototypes) has nothing to explain: the step records
that and writes no gallery.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mccl_core.config import ConfigError
from mccl_core.steps.common import ValidatedData, write_json
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.steps.layout import (
    EVALUATE_METRICS_FILE,
    EXPLANATIONS_DIR,
    GALLERY_DIR,
    MODEL_DIR,
    POINTING_FILE,
    VALIDATED_ANNOTATIONS_DIR,
    VALIDATED_DATA_FILE,
)
from mccl_core.steps.layout import EXPLAIN_METRICS_FILE as METRICS_FILE
from mccl_core.tracking.steps import TrackingOptions, tracked_step

log = logging.getLogger(__name__)


@dataclass
class ExplainConfig:
    """The ``explain`` section of params.yaml."""

    #: Training patches shown per prototype.
    gallery_top_k: int = 5
    #: Training images the gallery searches (the first ones of the split).
    gallery_max_images: int = 200
    #: Test images explained as examples (PNG + JSON each).
    examples: int = 4
    #: Test images the pointing game scores (0: all).
    pointing_max_images: int = 0
    batch_size: int = 32
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for name in ("gallery_top_k", "gallery_max_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"explain.{name} must be >= 1, got {getattr(self, name)}")
        if self.examples < 0:
            raise ConfigError(f"explain.examples must be >= 0, got {self.examples}")
        if self.pointing_max_images < 0:
            raise ConfigError(f"explain.pointing_max_images must be >= 0 (0: all), got {self.pointing_max_images}")


@dataclass
class ExplainResult:
    metrics: dict[str, float]
    pointing: dict[str, Any]
    gallery: dict[str, Any]
    explanations: list[str]
    mlflow_run_id: str | None


def _evaluate_threshold(evaluate_dir: Path | None) -> float | None:
    if evaluate_dir is None:
        return None
    path = Path(evaluate_dir) / EVALUATE_METRICS_FILE
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("threshold")
    return None if value is None else float(value)


def run_explain(
    cfg: ExplainConfig,
    validated: ValidatedData,
    model_dir: Path,
    out_dir: Path,
    tracking: TrackingOptions | None = None,
    evaluate_dir: Path | None = None,
    show_progress: bool = True,
) -> ExplainResult:
    """Gallery, example explanations and pointing game of the bundle in ``model_dir``."""
    from mccl_core.data import load_split
    from mccl_core.explain.gallery import build_gallery
    from mccl_core.explain.maps import ExplainError
    from mccl_core.explain.pointing import PointingDataError, pointing_game
    from mccl_core.explain.render import explain_image, write_explanation
    from mccl_core.models.bundle import load_bundle
    from mccl_core.models.mccl import MCCLModel
    from mccl_core.training.distributed import resolve_device

    out_dir = Path(out_dir)
    for folder in (out_dir / GALLERY_DIR, out_dir / EXPLANATIONS_DIR):  # DVC outs, even when empty
        folder.mkdir(parents=True, exist_ok=True)
    with tracked_step("explain", tracking, {"explain": asdict(cfg)}, None, validated.data_hash) as run:
        device = resolve_device(cfg.device)
        model, meta = load_bundle(Path(model_dir), device)
        threshold = _evaluate_threshold(evaluate_dir)
        if threshold is not None:
            meta.threshold = threshold
        metrics: dict[str, float] = {}
        pointing: dict[str, Any]
        gallery: dict[str, Any] = {}
        explained: list[str] = []
        if not isinstance(model, MCCLModel):
            reason = f"{type(model).__name__}: a baseline model has no intent queries or prototypes to explain"
            log.warning("explain: %s", reason)
            pointing = {"skipped": reason}
            write_json(out_dir / POINTING_FILE, pointing)
            write_json(out_dir / METRICS_FILE, metrics)
            return ExplainResult(metrics, pointing, gallery, explained, run.run_id)

        split = "test" if "test" in validated.splits else "val"
        try:
            result = pointing_game(model, meta, validated.data, split, device=device, batch_size=cfg.batch_size,
                                   max_images=cfg.pointing_max_images or None)  # fmt: skip
        except PointingDataError as error:
            pointing = {"skipped": str(error), "split": split}
            log.info("pointing game skipped: %s", error)
        else:
            pointing = {"split": split, **result.to_dict()}
            metrics.update(result.as_metrics())
            log.info("pointing game (%s, %d pairs): attention %.3f, assignment %s, random %.3f, centre %.3f", split,
                     result.pairs, result.attention, result.assignment, result.random, result.centre)  # fmt: skip
        write_json(out_dir / POINTING_FILE, pointing)

        if model.clues is not None:
            built = build_gallery(model, meta, validated.data, out_dir / GALLERY_DIR, top_k=cfg.gallery_top_k,
                                  max_images=cfg.gallery_max_images, batch_size=cfg.batch_size, device=device,
                                  show_progress=show_progress)  # fmt: skip
            gallery = built.summary
            metrics["gallery_prototypes"] = float(gallery["prototypes"])
            metrics["unreachable_prototypes"] = float(gallery["unreachable"])
            metrics["near_duplicate_prototypes"] = float(gallery["near_duplicate_prototypes"])
        else:
            gallery = {"skipped": "mcc.enabled is false: the model has no prototypes"}

        if cfg.examples:
            dataset = load_split(validated.data, split)
            for index in range(min(cfg.examples, len(dataset))):
                record = dataset.records[index]
                try:
                    explanation = explain_image(model, meta, dataset.load_image(index), image_name=record.image_id)
                except ExplainError as error:  # pragma: no cover - guarded by the isinstance above
                    log.warning("explain: %s", error)
                    break
                explanation.payload["true"] = [meta.class_names[c] for c in record.labels]
                write_explanation(explanation, out_dir / EXPLANATIONS_DIR, record.image_id)
                explained.append(record.image_id)

        write_json(out_dir / METRICS_FILE, metrics)
        run.log_metrics(metrics)
        for folder, artifact_path in ((out_dir / GALLERY_DIR, "explain/gallery"),
                                      (out_dir / EXPLANATIONS_DIR, "explain/explanations")):  # fmt: skip
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    run.log_artifact(path, artifact_path)
        run.log_artifact(out_dir / POINTING_FILE, "explain")
        run.log_artifact(out_dir / METRICS_FILE, "explain")
        return ExplainResult(metrics, pointing, gallery, explained, run.run_id)


# ------------------------------------------------------------------------------- step contract


def run(inputs: Mapping[str, Path], out_dir: Path, config: ExplainConfig, tracking: TrackingOptions) -> StepOutcome:
    validated = ValidatedData.load(inputs["validate"], folders=inputs)
    result = run_explain(config, validated, Path(inputs["train"]) / MODEL_DIR, out_dir, tracking,
                         evaluate_dir=inputs.get("evaluate"))  # fmt: skip
    m = result.metrics
    if "pointing_attention" in m:
        assignment = m.get("pointing_assignment")
        summary = (f"pointing game on {int(m['pointing_pairs'])} pairs: attention {m['pointing_attention']:.3f}, "
                   f"assignment {'n/a' if assignment is None else f'{assignment:.3f}'}, random {m['pointing_random']:.3f}, "
                   f"centre {m['pointing_centre']:.3f}")  # fmt: skip
    else:
        summary = f"pointing game skipped ({result.pointing.get('skipped', '')})"
    if "gallery_prototypes" in m:
        summary += (f"; gallery of {int(m['gallery_prototypes'])} prototypes, {int(m['unreachable_prototypes'])} "
                    f"unreachable, {int(m['near_duplicate_prototypes'])} near-duplicate")  # fmt: skip
    markdown = "\n".join(
        ["## MCCL explain", "", "| metric | value |", "| --- | --- |", *(f"| {k} | {v:.4f} |" for k, v in m.items())]
    )
    return StepOutcome(summary=summary, metrics=dict(m), markdown=markdown, mlflow_run_id=result.mlflow_run_id or "")


SPEC = StepSpec(
    name="explain",
    description="prototype gallery, example explanations and the pointing game on the demo's clue boxes",
    sections=("explain",),
    config=ExplainConfig,
    optional_sections=("explain",),
    inputs=(
        StepInput("validate", reads=(VALIDATED_DATA_FILE, VALIDATED_ANNOTATIONS_DIR)),
        StepInput("train", reads=(MODEL_DIR,)),
        StepInput("evaluate", reads=(EVALUATE_METRICS_FILE,)),
        StepInput("demo", reads=(".",), optional=True),
    ),
    output_kind="Artifact",
    run=run,
    cacheable=False,
)
