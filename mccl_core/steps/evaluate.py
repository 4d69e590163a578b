"""Evaluate step: official-protocol metrics of the trained model next to the label-prior baseline.

* Intentonomy-schema data (demo, Intentonomy): the **official protocol** - one global threshold
  tuned on val by macro-F1, applied unchanged to test - plus mAP; the split-tuned numbers (each
  split tuning its own threshold, optimistic) are reported separately under ``split_tuned``.
* MDID (train/val per split index): top-1 accuracy on val (``mdid_accuracy``) and split-tuned F1.
* The :class:`~mccl_core.metrics.baselines.LabelPriorPredictor` (training label frequencies, no pixels)
  is evaluated the same way: a model that does not beat it has learned nothing.

Outputs: ``metrics.json`` (compact, DVC metrics; holds the chosen ``threshold`` that the register
step gives the served model), ``report.json`` (everything, per class), ``threshold_curve.csv`` and
``per_class_f1.csv`` (DVC plots), ``plots/per_class_f1.png`` and ``plots/pr_curves.png``,
``predictions/<split>.npz`` (scores, labels, image ids).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mccl_core.data import load_split
from mccl_core.metrics import (
    ProtocolResult,
    intentonomy_subsets_for,
    mdid_accuracy,
    mean_average_precision,
    official_protocol,
    split_tuned_protocol,
)
from mccl_core.metrics.baselines import LabelPriorPredictor
from mccl_core.models.bundle import load_bundle
from mccl_core.steps.common import StepError, ValidatedData, write_json, write_text
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.steps.layout import EVALUATE_METRICS_FILE as METRICS_FILE
from mccl_core.steps.layout import EVALUATE_REPORT_FILE as REPORT_FILE
from mccl_core.steps.layout import (
    HTML_REPORT_FILE,
    MODEL_DIR,
    PER_CLASS_FILE,
    PLOTS_DIR,
    PREDICTIONS_DIR,
    THRESHOLD_CURVE_FILE,
    VALIDATED_ANNOTATIONS_DIR,
    VALIDATED_DATA_FILE,
)
from mccl_core.tracking.steps import TrackingOptions, tracked_step
from mccl_core.training.distributed import DistContext, resolve_device
from mccl_core.training.loop import predict_scores

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """The ``evaluate`` section of params.yaml."""

    batch_size: int = 64
    num_workers: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    plots: bool = True


@dataclass
class EvaluateResult:
    metrics: dict[str, Any]
    metrics_path: Path
    report_path: Path
    plot_paths: list[Path]
    mlflow_run_id: str | None

    @property
    def threshold(self) -> float:
        return float(self.metrics["threshold"])

    @property
    def selection_score(self) -> float:
        """The score models are selected by (champion, sweeps): a validation score, never test.

        Official protocol: val macro-F1 at the threshold tuned on val; MDID: split-tuned val macro-F1.
        """
        return float(self.metrics["selection_score"])


def run_evaluate(
    cfg: EvaluateConfig,
    validated: ValidatedData,
    model_dir: Path,
    out_dir: Path,
    tracking: TrackingOptions | None = None,
    all_params: dict[str, Any] | None = None,
) -> EvaluateResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tracked_step("evaluate", tracking, {"evaluate": asdict(cfg)}, all_params, validated.data_hash) as run:
        device = resolve_device(cfg.device)
        model, meta = load_bundle(Path(model_dir), device)
        from mccl_core.data.transforms import eval_transform_for

        transform = eval_transform_for(meta)
        ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
        train_labels = load_split(validated.data, "train").label_matrix()
        splits = [s for s in ("val", "test") if s in validated.splits]
        truth: dict[str, np.ndarray] = {}
        scores: dict[str, np.ndarray] = {}
        for split in splits:
            dataset = load_split(validated.data, split, transform=transform)
            if dataset.class_names != meta.class_names:
                raise StepError(f"{split} classes {dataset.class_names} differ from the model's {meta.class_names}")
            scores[split] = predict_scores(model, dataset, ctx, cfg.batch_size, num_workers=cfg.num_workers)
            truth[split] = dataset.label_matrix()
            predictions = out_dir / PREDICTIONS_DIR / f"{split}.npz"
            predictions.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(predictions, scores=scores[split], labels=truth[split],
                                image_ids=np.array([r.image_id for r in dataset.records]))  # fmt: skip
        prior = LabelPriorPredictor().fit(train_labels)
        prior_scores = {s: prior.predict(len(truth[s])) for s in splits}
        names = list(meta.class_names)
        subsets = intentonomy_subsets_for(names)  # the one rule: by class names

        report: dict[str, Any] = {"class_names": names, "splits": splits, "source": validated.source}
        metrics: dict[str, Any] = {}
        mlflow_metrics: dict[str, float] = {}
        curve_result: ProtocolResult
        if "test" in splits:
            official = official_protocol(truth["val"], scores["val"], truth["test"], scores["test"], subsets, names)
            prior_official = official_protocol(
                truth["val"], prior_scores["val"], truth["test"], prior_scores["test"], subsets, names
            )
            tuned = {s: split_tuned_protocol(truth[s], scores[s], subsets, names, split=s) for s in splits}
            report["model"] = {
                "official": official.to_dict(),
                "split_tuned": {s: r.to_dict() for s, r in tuned.items()},
            }
            report["label_prior"] = {"official": prior_official.to_dict()}
            metrics = {
                "protocol": "official",
                "threshold": official.threshold,
                "test_macro_f1": official.report.macro_f1,
                "test_micro_f1": official.report.micro_f1,
                "test_samples_f1": official.report.samples_f1,
                "test_map": official.average_precision.map,
                "val_macro_f1_at_threshold": official.selection.tuning_macro_f1,
                "split_tuned_val_macro_f1": tuned["val"].report.macro_f1,
                "split_tuned_test_macro_f1": tuned["test"].report.macro_f1,
                "label_prior_test_macro_f1": prior_official.report.macro_f1,
                "label_prior_test_map": prior_official.average_precision.map,
                "label_prior_threshold": prior_official.threshold,
            }
            # Model selection (champion, sweeps) on val only: the protocol's own tuning criterion.
            metrics["selection_score"] = metrics["val_macro_f1_at_threshold"]
            metrics["beats_label_prior"] = bool(metrics["test_macro_f1"] > metrics["label_prior_test_macro_f1"])
            mlflow_metrics.update(official.metrics())
            for result in tuned.values():
                mlflow_metrics.update(result.metrics())
            mlflow_metrics.update({f"label_prior/{k}": v for k, v in prior_official.metrics().items()})
            curve_result, report_split, per_class = official, "test", official.report.per_class_f1
            prior_per_class = prior_official.report.per_class_f1
        else:  # MDID: val only
            tuned_val = split_tuned_protocol(truth["val"], scores["val"], subsets, names, split="val")
            prior_val = split_tuned_protocol(truth["val"], prior_scores["val"], subsets, names, split="val")
            single = truth["val"].argmax(axis=1)
            accuracy = mdid_accuracy([(single, scores["val"])])
            prior_accuracy = mdid_accuracy([(single, prior_scores["val"])])
            report["model"] = {"split_tuned": {"val": tuned_val.to_dict()}, "mdid_accuracy": accuracy.to_dict()}
            report["label_prior"] = {
                "split_tuned": {"val": prior_val.to_dict()},
                "mdid_accuracy": prior_accuracy.to_dict(),
            }
            metrics = {
                "protocol": "mdid",
                "threshold": tuned_val.threshold,
                "val_accuracy": accuracy.mean,
                "split_tuned_val_macro_f1": tuned_val.report.macro_f1,
                "val_map": tuned_val.average_precision.map,
                "label_prior_val_accuracy": prior_accuracy.mean,
                "label_prior_val_macro_f1": prior_val.report.macro_f1,
            }
            metrics["selection_score"] = metrics["split_tuned_val_macro_f1"]
            metrics["beats_label_prior"] = bool(metrics["val_accuracy"] > metrics["label_prior_val_accuracy"])
            mlflow_metrics.update(tuned_val.metrics())
            mlflow_metrics["mdid/val_accuracy"] = accuracy.mean
            mlflow_metrics["label_prior/mdid/val_accuracy"] = prior_accuracy.mean
            curve_result, report_split, per_class = tuned_val, "val", tuned_val.report.per_class_f1
            prior_per_class = prior_val.report.per_class_f1
        metrics = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in metrics.items()}
        metrics["class_count"] = len(names)
        metrics_path = write_json(out_dir / METRICS_FILE, metrics)
        report_path = write_json(out_dir / REPORT_FILE, {**report, "summary": metrics})
        _write_curves(out_dir, curve_result, names, per_class, prior_per_class)
        plot_paths: list[Path] = []
        if cfg.plots:
            plot_paths = _plots(out_dir / PLOTS_DIR, names, per_class, prior_per_class, truth[report_split],
                                scores[report_split], report_split)  # fmt: skip
        html_path = write_text(out_dir / HTML_REPORT_FILE, evaluation_html(metrics, plot_paths))
        verdict = "beats" if metrics["beats_label_prior"] else "does NOT beat"
        log.info("model %s the label prior: %s", verdict,
                 {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})  # fmt: skip
        run.log_metrics({k.replace(" ", "_"): float(v) for k, v in mlflow_metrics.items()})
        run.log_metrics({f"summary/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        run.log_headline(headline_metrics(metrics))
        for path in [
            metrics_path,
            report_path,
            html_path,
            out_dir / THRESHOLD_CURVE_FILE,
            out_dir / PER_CLASS_FILE,
            *plot_paths,
        ]:
            run.log_artifact(path, "evaluation")
        return EvaluateResult(metrics, metrics_path, report_path, plot_paths, run.run_id)


def _write_curves(out_dir: Path, result: Any, names: list[str], per_class: Any, prior_per_class: Any) -> None:
    with (out_dir / THRESHOLD_CURVE_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", f"{result.selection.tuned_on}_macro_f1"])
        for threshold, value in zip(result.selection.candidates, result.selection.macro_f1_per_candidate):
            writer.writerow([f"{threshold:.2f}", f"{value:.6f}"])
    with (out_dir / PER_CLASS_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "model_f1", "label_prior_f1"])
        for name, value, prior in zip(names, per_class, prior_per_class):
            writer.writerow([name, f"{value:.6f}", f"{prior:.6f}"])


def _plots(plots_dir: Path, names: list[str], per_class: Any, prior_per_class: Any, truth: np.ndarray,
           scores: np.ndarray, split: str) -> list[Path]:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    plots_dir.mkdir(parents=True, exist_ok=True)
    positions = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names)), 4.5))
    ax.bar(positions - 0.2, per_class, width=0.4, label="model")
    ax.bar(positions + 0.2, prior_per_class, width=0.4, label="label prior")
    ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"F1 on {split}")
    ax.set_ylim(0, 1)
    ax.set_title(f"Per-class F1 ({split}, threshold tuned on val)")
    ax.legend()
    fig.tight_layout()
    bars = plots_dir / "per_class_f1.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab20")
    for c, name in enumerate(names):
        if truth[:, c].sum() == 0:
            continue
        precision, recall, _ = precision_recall_curve(truth[:, c], scores[:, c])
        ax.plot(recall, precision, lw=1, color=cmap(c % 20), label=name)
    precision, recall, _ = precision_recall_curve(truth.ravel(), scores.ravel())
    macro_map = mean_average_precision(truth, scores).map
    ax.plot(recall, precision, lw=2.5, color="black", label="all classes pooled (micro)")
    ax.text(0.98, 0.02, f"mAP (mean over classes) {macro_map:.3f}", ha="right", va="bottom", transform=ax.transAxes)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Precision-recall per class ({split})")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    curves = plots_dir / "pr_curves.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    return [bars, curves]


def evaluation_html(metrics: Mapping[str, Any], plots: list[Path]) -> str:
    """The metrics table and the plots (embedded as base64 PNG) in one page."""
    import base64
    import html

    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in metrics.items()
    )  # fmt: skip
    images = "".join(
        f'<h3>{html.escape(p.stem)}</h3><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
        for p in plots
    )
    return f"<html><body><h2>MCCL evaluation</h2><table border='1'>{rows}</table>{images}</body></html>\n"


#: The numbers a sweep is compared by (``dvc exp show``, the MLflow parent run), per protocol:
#: the official test scores with the label prior beside them, and the validation score that
#: selects models (test is reported, never chosen on).
HEADLINE_KEYS = {
    "official": ("test_macro_f1", "test_micro_f1", "test_samples_f1", "test_map", "val_macro_f1_at_threshold",
                 "threshold", "label_prior_test_macro_f1", "label_prior_test_map"),
    "mdid": ("val_accuracy", "split_tuned_val_macro_f1", "val_map", "threshold", "label_prior_val_accuracy",
             "label_prior_val_macro_f1"),
}  # fmt: skip


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline subset of the evaluation summary (``metrics.json``) for its protocol."""
    return {k: float(metrics[k]) for k in HEADLINE_KEYS[str(metrics["protocol"])] if k in metrics}


# ------------------------------------------------------------------------------- step contract


def run(inputs: Mapping[str, Path], out_dir: Path, config: EvaluateConfig, tracking: TrackingOptions) -> StepOutcome:
    validated = ValidatedData.load(inputs["validate"], folders=inputs)
    result = run_evaluate(config, validated, Path(inputs["train"]) / MODEL_DIR, out_dir, tracking,
                          all_params={"evaluate": asdict(config)})  # fmt: skip
    m = result.metrics
    if m["protocol"] == "official":
        summary = (f"test macro-F1 {m['test_macro_f1']:.4f} (label prior {m['label_prior_test_macro_f1']:.4f}), "
                   f"test mAP {m['test_map']:.4f} (label prior {m['label_prior_test_map']:.4f}), threshold {m['threshold']:.2f}")  # fmt: skip
    else:
        summary = f"val accuracy {m['val_accuracy']:.4f} (label prior {m['label_prior_val_accuracy']:.4f})"
    return StepOutcome(
        summary=summary,
        metrics=headline_metrics(m),
        html=(out_dir / HTML_REPORT_FILE).read_text(encoding="utf-8"),
        mlflow_run_id=result.mlflow_run_id or "",
    )


SPEC = StepSpec(
    name="evaluate",
    description="official-protocol metrics (val-tuned threshold, test F1/mAP) vs the label prior, plots",
    sections=("evaluate",),
    config=EvaluateConfig,
    optional_sections=("evaluate",),
    inputs=(
        StepInput("validate", reads=(VALIDATED_DATA_FILE, VALIDATED_ANNOTATIONS_DIR)),
        StepInput("train", reads=(MODEL_DIR,)),
        StepInput("demo", reads=(".",), optional=True),
    ),
    output_kind="Artifact",
    run=run,
    cacheable=False,
)
